// Both function shims, run on the host as they run in a runtime VM: every request needs the
// per-instance key kilnd writes through the guest agent; without it (another VM, a host user)
// nothing loads and nothing is invoked. The key file is read per request (a restored clone
// gets its own key after it resumed).
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { freePort } from '../../test/helpers/ports.ts';
import { ShimClient } from './shim-client.ts';

const SHIMS = fileURLToPath(new URL('./shims/', import.meta.url));
const hasPython = spawnSync('python3', ['--version']).status === 0;

for (const runtime of ['node', 'python'] as const) {
  test(`the ${runtime} shim refuses requests without this instance's key`, { skip: runtime === 'python' && !hasPython ? 'no python3' : false }, async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-shim-'));
    const keyFile = path.join(dir, 'shim.key');
    const port = await freePort();
    const env = { ...process.env, KILN_SHIM_PORT: String(port), KILN_SHIM_KEY_FILE: keyFile, KILN_CODE_ROOT: path.join(dir, 'code') };
    const proc: ChildProcess = runtime === 'node'
      ? spawn(process.execPath, [path.join(SHIMS, 'node-shim.cjs')], { env, stdio: 'ignore' })
      : spawn('python3', ['-u', path.join(SHIMS, 'python-shim.py')], { env, stdio: 'ignore' });
    const key = randomBytes(32).toString('hex');
    const good = new ShimClient('127.0.0.1', port, 1, key);
    const wrong = new ShimClient('127.0.0.1', port, 1, randomBytes(32).toString('hex'));
    try {
      const raw = async (headers: Record<string, string>, p = '/health', body?: string) => {
        const r = await fetch(`http://127.0.0.1:${port}${p}`, { method: body ? 'POST' : 'GET', headers, body });
        return { status: r.status, body: (await r.json()) as { ok: boolean; error?: { type: string } } };
      };
      const deadline = Date.now() + 20_000;
      for (;;) {
        const r = await raw({}).catch(() => null);
        if (r) break;
        if (Date.now() > deadline) throw new Error('the shim did not listen');
        await new Promise((res) => setTimeout(res, 50));
      }
      // Before kilnd wrote a key, nothing is accepted at all.
      assert.equal((await raw({ 'x-kiln-shim-key': key })).status, 401);
      await fs.writeFile(keyFile, key);
      assert.deepEqual((await raw({})).body.error?.type, 'Unauthorized');
      assert.equal((await raw({ 'x-kiln-shim-key': key.slice(0, 63) })).status, 401);
      const load = JSON.stringify({ function: 'f', version: 1, handler: 'index.handler', env: {}, files: [] });
      assert.equal((await raw({ 'x-kiln-shim-key': 'x', 'content-type': 'application/json' }, '/load', load)).status, 401);
      assert.equal((await raw({ 'x-kiln-shim-key': 'x', 'content-type': 'application/json' }, '/invoke', '{"id":"1","event":{},"deadline_ms":1000}')).status, 401);
      await assert.rejects(wrong.waitHealthy(Date.now() + 300));
      assert.ok((await good.waitHealthy(Date.now() + 5000)).pid > 0);
      // A new key (a restored clone's) replaces the old one at once.
      const next = randomBytes(32).toString('hex');
      await fs.writeFile(keyFile, next);
      assert.equal((await raw({ 'x-kiln-shim-key': key })).status, 401);
      assert.equal((await raw({ 'x-kiln-shim-key': next })).status, 200);
    } finally {
      await good.close();
      await wrong.close();
      proc.kill('SIGKILL');
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
}

// exec and files through kilnd's API, SDK and CLI, against a real VM whose agent kilnd wired
// up (network, config drive, push readiness). The agent's own semantics in depth (100 MB
// output, process-group timeouts, concurrency, hostile peers) are in test/agent-guest.test.ts
// and src/guest/agent/*.test.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { KilnApiError } from '../src/sdk/client.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';

const skip = BACKEND_SKIP ?? false;
const BIN = new URL('../bin/kiln.js', import.meta.url).pathname;
let d: TestDaemon;
let vmId: string;

function kiln(args: string[], stdin?: Buffer): Promise<{ stdout: Buffer; stderr: string; code: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, '--api', d.url, '--state-dir', d.stateDir, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (b) => out.push(b));
    p.stderr.on('data', (b) => (err += b));
    p.on('error', reject);
    p.on('close', (code) => resolve({ stdout: Buffer.concat(out), stderr: err, code: code ?? -1 }));
    p.stdin.end(stdin ?? Buffer.alloc(0));
  });
}

before(async () => {
  if (skip) return;
  d = await startKilnd();
  vmId = (await d.client.createVm({ name: 'agentvm', cmd: ['/bin/sleep', '100000'] }, { wait: true })).id;
});
after(() => d?.dispose());

test('API exec: exit code, stdout/stderr apart, env, cwd, stdin, user', { skip }, async () => {
  const r = await d.client.exec(vmId, {
    cmd: ['/bin/sh', '-c', 'echo out; echo err >&2; echo "$X"; pwd; id -u; cat; exit 5'],
    env: { X: 'y' }, cwd: '/tmp', user: '1000', stdin: 'from stdin',
  });
  assert.deepEqual(r, { exit_code: 5, signal: null, timed_out: false, stdout: 'out\ny\n/tmp\n1000\nfrom stdin', stderr: 'err\n', truncated: false });
});

test('API exec: timeout kills, unknown command is a 422, a missing VM a 404', { skip }, async () => {
  const r = await d.client.exec(vmId, { cmd: ['sleep', '1000'], timeoutMs: 300 });
  assert.equal(r.timed_out, true);
  assert.equal(r.signal, 9);
  await assert.rejects(d.client.exec(vmId, { cmd: ['/no/such'] }), (e: KilnApiError) => e.status === 422 && e.code === 'KILN_ERR_GUEST_OP_FAILED');
  await assert.rejects(d.client.exec('nope', { cmd: ['true'] }), (e: KilnApiError) => e.code === 'KILN_ERR_VM_NOT_FOUND');
});

test('streaming exec delivers 20 MB intact and the exit last', { skip }, async () => {
  const hash = createHash('sha256');
  let n = 0;
  let exit: unknown;
  let stderr = '';
  for await (const item of d.client.execStream(vmId, { cmd: ['/bin/sh', '-c', 'head -c 20971520 /dev/urandom | tee /tmp/r | cat; sha256sum /tmp/r >&2'] })) {
    if ('stream' in item && item.stream === 'stdout') {
      hash.update(item.data);
      n += item.data.length;
    } else if ('stream' in item) stderr += item.data.toString();
    else exit = item.exit;
  }
  assert.equal(n, 20 * 1024 * 1024);
  assert.deepEqual(exit, { exit_code: 0, signal: null, timed_out: false });
  assert.equal(stderr.split(' ')[0], hash.digest('hex'));
});

test('concurrent execs run side by side', { skip }, async () => {
  const slow = d.client.exec(vmId, { cmd: ['sleep', '2'] });
  const fast = await Promise.all(Array.from({ length: 6 }, (_, i) => d.client.exec(vmId, { cmd: ['echo', String(i)] })));
  assert.deepEqual(fast.map((r) => r.stdout), ['0\n', '1\n', '2\n', '3\n', '4\n', '5\n']);
  assert.equal((await slow).exit_code, 0);
});

test('CLI: kiln exec passes stdout, stderr, stdin (-i) and the exit code through', { skip }, async () => {
  const r = await kiln(['exec', '-i', 'agentvm', '--', '/bin/sh', '-c', 'tr a-z A-Z; echo oops >&2; exit 3'], Buffer.from('shout'));
  assert.equal(r.code, 3);
  assert.equal(r.stdout.toString(), 'SHOUT');
  assert.match(r.stderr, /oops/);
  const killed = await kiln(['exec', '-t', '200', 'agentvm', '--', 'sleep', '100']);
  assert.equal(killed.code, 137);
});

test('files: kiln cp in and out, API put/get, not-found', { skip }, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-cp-'));
  try {
    const data = randomBytes(3 * 1024 * 1024 + 5);
    await fs.writeFile(path.join(dir, 'in.bin'), data, { mode: 0o600 });
    const up = await kiln(['cp', '-p', path.join(dir, 'in.bin'), 'agentvm:/data/x/in.bin']);
    assert.equal(up.code, 0, up.stderr);
    const ls = await d.client.exec(vmId, { cmd: ['stat', '-c', '%a %s', '/data/x/in.bin'] });
    assert.equal(ls.stdout, `600 ${data.length}\n`);
    const down = await kiln(['cp', 'agentvm:/data/x/in.bin', path.join(dir, 'out.bin')]);
    assert.equal(down.code, 0, down.stderr);
    assert.ok((await fs.readFile(path.join(dir, 'out.bin'))).equals(data));
    await d.client.putFile(vmId, '/etc/kiln-note', 'hello');
    const got = await d.client.getFile(vmId, '/etc/kiln-note');
    const parts: Uint8Array[] = [];
    for await (const c of got.body) parts.push(c);
    assert.equal(Buffer.concat(parts).toString(), 'hello');
    assert.equal(got.mode, 0o644);
    await assert.rejects(d.client.getFile(vmId, '/no/such'), (e: KilnApiError) => e.status === 404 && e.code === 'KILN_ERR_GUEST_PATH_NOT_FOUND');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

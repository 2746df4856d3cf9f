// The `kiln` CLI against a real kilnd: create, ls, get, logs, stop, rm, images import.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { buildBusyboxTree } from '../src/image/default-image.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { KILN_BIN, runKiln } from './helpers/kiln-cli.ts';

let d: TestDaemon;

const kiln = (...args: string[]) => runKiln(d, args);

before(async () => {
  if (skip) return;
  d = await startKilnd();
});
after(() => d?.dispose());

test('vm create/ls/get/logs/stop/rm, with --json and tables', { skip }, async () => {
  const created = await kiln('--json', 'vm', 'create', '--name', 'cli1', '-e', 'WHO=cli', '--', '/bin/sh', '-c', 'echo "hello $WHO"; while :; do sleep 10; done');
  assert.equal(created.code, 0, created.stderr);
  const vm = JSON.parse(created.stdout);
  assert.equal(vm.state, 'ready');

  const ls = await kiln('vm', 'ls');
  assert.match(ls.stdout, /NAME[\s\S]*cli1\s.*ready/);
  const lsJson = JSON.parse((await kiln('--json', 'vm', 'ls')).stdout);
  assert.ok(lsJson.some((v: { name: string }) => v.name === 'cli1'));

  const get = await kiln('vm', 'get', 'cli1');
  assert.match(get.stdout, /guest\.kernel/);

  // logs may lag the ready line by a moment: follow until the line is there.
  const follow = execFile(process.execPath, [KILN_BIN, '--api', d.url, '--state-dir', d.stateDir, 'vm', 'logs', '-f', 'cli1']);
  let out = '';
  await new Promise<void>((resolve) => follow.stdout!.on('data', (b) => ((out += b), /hello cli/.test(out) && resolve())));
  follow.kill('SIGINT');

  const stop = await kiln('--json', 'vm', 'stop', 'cli1');
  assert.equal(JSON.parse(stop.stdout).state, 'stopped');
  assert.equal((await kiln('vm', 'rm', 'cli1')).code, 0);
  const gone = await kiln('vm', 'get', 'cli1');
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /KILN_ERR_VM_NOT_FOUND/);
});

test('images import uploads a directory; a VM boots it with the image command', { skip }, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-cli-img-'));
  await buildBusyboxTree(dir);
  await fs.writeFile(path.join(dir, 'etc/motd'), 'from-imported-tree\n');
  const imp = await kiln('--json', 'images', 'import', dir, '--name', 'cli-img', '--cmd', '["/bin/cat","/etc/motd"]');
  assert.equal(imp.code, 0, imp.stderr);
  assert.deepEqual(JSON.parse(imp.stdout).config.cmd, ['/bin/cat', '/etc/motd']);
  assert.match((await kiln('images', 'ls')).stdout, /cli-img/);
  // The command exits at once, so wait for the VM to stop rather than to be ready.
  const vm = JSON.parse((await kiln('--json', 'vm', 'create', '--image', 'cli-img', '--no-wait')).stdout);
  assert.equal((await waitForState(d.client, vm.id, ['stopped', 'failed'])).state, 'stopped');
  assert.match(await d.client.logs(vm.id), /from-imported-tree/);
  const inUse = await kiln('images', 'rm', 'cli-img');
  assert.match(inUse.stderr, /KILN_ERR_IMAGE_IN_USE/);
  await kiln('vm', 'rm', vm.id);
  assert.equal((await kiln('images', 'rm', 'cli-img')).code, 0);
  await fs.rm(dir, { recursive: true, force: true });
});

// Functions on real VMs (issue #6 acceptance 1–5): node and python runtimes built from
// Debian's archive, a warm pool of one blank instance per size in use, deploy/invoke through
// the API, SDK and CLI. Sizes are kept at 128 MiB except for the verbatim 512 MiB request.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import * as tar from 'tar';
import { KilnApiError } from '../src/sdk/client.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { makeZip } from './helpers/zip.ts';
import { until } from './helpers/until.ts';
import { runKiln } from './helpers/kiln-cli.ts';

let d: TestDaemon;

before(async () => {
  if (skip) return;
  // Instances boot here (the restore path, on by default, has test/function-restore.test.ts):
  // the sources these tests assert stay pool/boot, and no template build shares the CPU.
  d = await startKilnd({ env: { KILN_FN_POOL_SIZE: '1', KILN_FN_RESTORE: '0' } });
});
after(() => d?.dispose());

async function vmGone(id: string): Promise<boolean> {
  return !(await d.client.listVms()).some((v) => v.id === id);
}

test('acceptance 1: the verbatim request, then invoke → {"hello":"world"}; the same in Python', { skip }, async () => {
  const res = await d.client.request('POST', '/v1/functions', {
    raw: '{"name": "test-fast", "runtime": "node",\n "code": "async function handler(event) { return { hello: \\"world\\" }; }",\n "handler": "handler", "vcpu": 1, "memory_mb": 512}',
    contentType: 'application/json',
  });
  assert.equal(res.status, 201);
  const created = await res.json() as { name: string; version: number; memory_mb: number };
  assert.equal(created.version, 1);
  assert.equal(created.memory_mb, 512);
  const r = await d.client.invoke('test-fast', {});
  assert.deepEqual(r.result, { hello: 'world' });
  assert.equal(r.cold, true);
  assert.ok(r.source === 'pool' || r.source === 'boot', String(r.source));
  const warm = await d.client.invoke('test-fast', {});
  assert.deepEqual(warm.result, { hello: 'world' });
  assert.equal(warm.cold, false);
  // Raw HTTP too: the invoke answer is the result itself.
  const raw = await d.client.request('POST', '/v1/functions/test-fast/invoke', { body: {} });
  assert.deepEqual(await raw.json(), { hello: 'world' });

  await d.client.createFunction({ name: 'test-fast-py', runtime: 'python', code: 'def handler(event, context):\n    return {"hello": "world"}\n', handler: 'handler', vcpu: 1, memory_mb: 512 });
  assert.deepEqual((await d.client.invoke('test-fast-py', {})).result, { hello: 'world' });

  const invs = await d.client.invocations('test-fast');
  assert.equal(invs.length, 3);
  const cold = invs.at(-1)!;
  assert.equal(cold.cold, true);
  assert.ok(cold.timeline.some((p) => p.phase === `instance.${cold.source}`) && cold.timeline.some((p) => p.phase === 'code.load'), JSON.stringify(cold.timeline));
  assert.ok(invs[0]!.guest_ms !== null && invs[0]!.host_overhead_ms !== null);
  const metrics = await (await d.client.request('GET', '/metrics')).text();
  assert.match(metrics, /kiln_function_invoke_seconds_count\{runtime="node",start="cold",status="ok"\} 1/);
  assert.match(metrics, /kiln_function_invoke_seconds_count\{runtime="node",start="warm",status="ok"\} 2/);
  assert.match(metrics, /kiln_function_pool_total\{runtime="node",result="(hit|miss)"\} 1/);
  assert.match(metrics, /kiln_function_instances\{runtime="node",state="ready"\} 1/);
  assert.match(metrics, /kiln_function_host_overhead_seconds_count\{runtime="node"\} 2/);
  await d.client.deleteFunction('test-fast');
  await d.client.deleteFunction('test-fast-py');
  await until('the instances to be deleted', async () => (await vmGone(cold.instance!)) || null);
});

const NODE_MODES = `
async function handler(event) {
  switch (event.mode) {
    case 'env':
      console.log('hello from', process.env.GREETING);
      console.error('to stderr');
      return { greeting: process.env.GREETING, event };
    case 'throw':
      throw new TypeError('bad input: ' + event.why);
    case 'hang':
      for (;;) {}
    case 'oom': {
      const keep = [];
      for (;;) keep.push(new Array(1 << 20).fill(Math.random()));
    }
  }
  return 'ok';
}
`;

test('acceptance 2 (node): env, console capture, structured error, timeout kill, memory exhaustion', { skip }, async () => {
  await d.client.createFunction({ name: 'modes', runtime: 'node', code: NODE_MODES, env: { GREETING: 'kiln' }, memory_mb: 128, timeout_ms: 4000, max_instances: 1 });
  const ok = await d.client.invoke<{ greeting: string }>('modes', { mode: 'env' });
  assert.equal(ok.result.greeting, 'kiln');
  const [inv] = await d.client.invocations('modes', 1);
  assert.equal(inv!.status, 'ok');
  assert.match(inv!.logs, /hello from kiln\n/);
  assert.match(inv!.logs, /to stderr\n/);
  const first = inv!.instance!;

  const thrown = await expectApiError(d.client.invoke('modes', { mode: 'throw', why: 'xyz' }), 502, 'KILN_ERR_FUNCTION_ERROR');
  const det = thrown.details as { type: string; message: string; stack: string; invocation: string };
  assert.equal(det.type, 'TypeError');
  assert.equal(det.message, 'bad input: xyz');
  assert.match(det.stack, /TypeError: bad input: xyz\n\s+at \S*handler.* \(.*index\.js:9:\d+\)/);
  assert.doesNotMatch(det.stack, /shim/);
  assert.equal((await d.client.invocations('modes', 1))[0]!.instance, first, 'an exception keeps the instance');

  const timedOut = await expectApiError(d.client.invoke('modes', { mode: 'hang' }), 504, 'KILN_ERR_FUNCTION_TIMEOUT');
  assert.equal((timedOut.details as { timeout_ms: number }).timeout_ms, 4000);
  assert.equal((await d.client.invocations('modes', 1))[0]!.status, 'timeout');
  await until('the hung instance to be killed', async () => (await vmGone(first)) || null);
  const after1 = await d.client.invoke('modes', { mode: 'env' });
  assert.equal(after1.cold, true, 'a new instance replaced the killed one');
  const second = (await d.client.invocations('modes', 1))[0]!.instance!;
  assert.notEqual(second, first);

  // Exhausting the heap under emulation can take longer than 4 s: this version may run 60 s.
  assert.equal((await d.client.updateFunction('modes', { timeout_ms: 60_000 })).version, 2);
  assert.equal((await d.client.invoke('modes', { mode: 'env' })).cold, true);
  await until('the v1 instance to stop', async () => (await vmGone(second)) || null);
  const third = (await d.client.invocations('modes', 1))[0]!.instance!;
  const oomErr = await expectApiError(d.client.invoke('modes', { mode: 'oom' }), 502, 'KILN_ERR_FUNCTION_OOM');
  assert.match(oomErr.message, /ran out of memory \(128 MiB/);
  assert.equal((await d.client.invocations('modes', 1))[0]!.status, 'oom');
  await until('the exhausted instance to be replaced', async () => (await vmGone(third)) || null);
  const after2 = await d.client.invoke<{ greeting: string }>('modes', { mode: 'env' });
  assert.equal(after2.result.greeting, 'kiln');
  assert.equal(after2.cold, true);
  await d.client.deleteFunction('modes');
});

test('acceptance 2 (python): env, print capture, structured error with traceback', { skip }, async () => {
  const code = [
    'import os',
    'def handler(event, context):',
    '    print("hello from", os.environ["GREETING"], context.function_name)',
    '    if event.get("fail"):',
    '        raise ValueError("no good: %s" % event["fail"])',
    '    return {"greeting": os.environ["GREETING"], "n": event.get("n", 0) + 1}',
    '',
  ].join('\n');
  await d.client.createFunction({ name: 'pymodes', runtime: 'python', code, env: { GREETING: 'kiln' }, memory_mb: 128 });
  const ok = await d.client.invoke<{ greeting: string; n: number }>('pymodes', { n: 41 });
  assert.deepEqual(ok.result, { greeting: 'kiln', n: 42 });
  assert.match((await d.client.invocations('pymodes', 1))[0]!.logs, /^hello from kiln pymodes\n$/);
  const e = await expectApiError(d.client.invoke('pymodes', { fail: 'abc' }), 502, 'KILN_ERR_FUNCTION_ERROR');
  const det = e.details as { type: string; message: string; stack: string };
  assert.equal(det.type, 'ValueError');
  assert.equal(det.message, 'no good: abc');
  assert.match(det.stack, /File "main\.py", line 5, in handler[\s\S]*ValueError: no good: abc/);
  assert.match(await d.client.functionLogs('pymodes'), /hello from kiln pymodes/);
  await d.client.deleteFunction('pymodes');
});

test('acceptance 3: 20 concurrent calls, max_instances 3, concurrency 1: all succeed on ≤ 3 instances; a small queue gives 429s', { skip }, async () => {
  const code = 'async function handler(e) { await new Promise((r) => setTimeout(r, 300)); return e.i; }';
  await d.client.createFunction({ name: 'wide', runtime: 'node', code, memory_mb: 128, max_instances: 3, concurrency: 1 });
  let maxSeen = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      maxSeen = Math.max(maxSeen, (await d.client.getFunction('wide')).instances.length);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => d.client.invoke<number>('wide', { i })));
  polling = false;
  await poll;
  assert.deepEqual(results.map((r) => r.result), Array.from({ length: 20 }, (_, i) => i));
  const invs = await d.client.invocations('wide');
  assert.equal(invs.length, 20);
  assert.ok(invs.every((i) => i.status === 'ok'));
  const instances = new Set(invs.map((i) => i.instance));
  assert.ok(instances.size <= 3, `${instances.size} instances`);
  assert.ok(maxSeen <= 3, `saw ${maxSeen} instances`);
  assert.ok(invs.some((i) => i.timeline.some((p) => p.phase === 'queue')), 'some calls queued');
  await d.client.deleteFunction('wide');

  const slow = 'async function handler() { await new Promise((r) => setTimeout(r, 1000)); return "done"; }';
  await d.client.createFunction({ name: 'narrow', runtime: 'node', code: slow, memory_mb: 128, max_instances: 1, concurrency: 1, queue_size: 2 });
  const settled = await Promise.allSettled(Array.from({ length: 8 }, () => d.client.invoke('narrow', {})));
  const ok = settled.filter((s) => s.status === 'fulfilled');
  const throttled = settled.filter((s) => s.status === 'rejected' && s.reason instanceof KilnApiError && s.reason.code === 'KILN_ERR_FUNCTION_THROTTLED' && s.reason.status === 429);
  assert.ok(ok.length >= 1, 'some calls ran');
  assert.ok(throttled.length >= 1, 'some calls got 429');
  assert.equal(ok.length + throttled.length, 8, JSON.stringify(settled.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason))));
  await d.client.deleteFunction('narrow');
});

test('acceptance 4: an update while calls are in flight; idle instances reaped after idle_timeout', { skip }, async () => {
  const v = (tag: string) => `async function handler(e) { await new Promise((r) => setTimeout(r, e.sleep || 0)); return "${tag}"; }`;
  await d.client.createFunction({ name: 'upd', runtime: 'node', code: v('v1'), memory_mb: 128, max_instances: 2, idle_timeout: 2 });
  assert.equal((await d.client.invoke('upd', {})).result, 'v1');
  const inflight = d.client.invoke('upd', { sleep: 4000 });
  await until('the call to be in flight', async () => (await d.client.getFunction('upd')).instances.some((i) => i.inflight === 1));
  const updated = await d.client.updateFunction('upd', { code: v('v2') });
  assert.equal(updated.version, 2);
  const fresh = await d.client.invoke('upd', {});
  assert.equal(fresh.result, 'v2', 'new calls run the new code');
  assert.equal((await inflight).result, 'v1', 'the call in flight finished on the old version');
  const invs = await d.client.invocations('upd');
  assert.deepEqual(invs.map((i) => [i.version, i.status]), [[2, 'ok'], [1, 'ok'], [1, 'ok']], 'newest first: the new call on v2, both earlier calls on v1');
  assert.equal(invs[0]!.id, fresh.invocation);
  const oldVm = invs.find((i) => i.version === 1)!.instance!;
  await until('the old version\'s instance to drain and stop', async () => (await vmGone(oldVm)) || null);
  // Scale to zero: idle_timeout 2 s.
  const f = await until('idle instances to be reaped', async () => {
    const g = await d.client.getFunction('upd');
    return g.instances.length === 0 ? g : null;
  }, 30_000);
  assert.equal(f.version, 2);
  const back = await d.client.invoke('upd', {});
  assert.equal(back.result, 'v2');
  assert.equal(back.cold, true, 'a call after scale-to-zero starts an instance');
  await d.client.deleteFunction('upd');
});

test('acceptance 5: bad input', { skip }, async () => {
  const c = d.client;
  const unknown = await expectApiError(c.createFunction({ name: 'bad1', runtime: 'ruby', code: 'x' }), 400, 'KILN_ERR_VALIDATION');
  assert.match(unknown.message, /unknown runtime "ruby"; kiln has: node, python/);
  await expectApiError(c.createFunction({ name: 'bad2', runtime: 'node', code: '' }), 400, 'KILN_ERR_VALIDATION');
  await expectApiError(c.createFunction({ name: 'bad3', runtime: 'node' }), 400, 'KILN_ERR_VALIDATION');
  for (const name of ['Bad', '-x', 'a'.repeat(64), 'has space', '../x', '']) {
    await expectApiError(c.createFunction({ name, runtime: 'node', code: 'function handler() {}' }), 400, 'KILN_ERR_VALIDATION');
  }
  await expectApiError(c.createFunction({ name: 'bad4', runtime: 'node', code: 'x'.repeat(6 * 1024 * 1024 + 1) }), 413, 'KILN_ERR_CODE_TOO_LARGE');
  await expectApiError(c.createFunction({ name: 'bad5', runtime: 'node', archive: randomBytes(50 * 1024 * 1024 + 1).toString('base64') }), 413, 'KILN_ERR_CODE_TOO_LARGE');
  await expectApiError(c.createFunction({ name: 'bad6', runtime: 'node', archive: Buffer.from('not an archive').toString('base64') }), 400, 'KILN_ERR_VALIDATION');
  await expectApiError(c.createFunction({ name: 'bad7', runtime: 'node', code: 'function handler() {}', handler: '../etc' }), 400, 'KILN_ERR_VALIDATION');
  await expectApiError(c.invoke('no-such-fn', {}), 404, 'KILN_ERR_FUNCTION_NOT_FOUND');
  assert.deepEqual((await c.listFunctions()).functions.filter((f) => f.name.startsWith('bad')), [], 'nothing was created');

  // Syntax errors and a missing handler: reported at the first call, then at once.
  await c.createFunction({ name: 'syntax', runtime: 'node', code: 'async function handler(event) {\n  return { oops: ;\n}\n', memory_mb: 128 });
  const se = await expectApiError(c.invoke('syntax', {}), 422, 'KILN_ERR_FUNCTION_LOAD');
  assert.equal((se.details as { type: string }).type, 'SyntaxError');
  assert.match((se.details as { stack: string }).stack, /index\.js:2/);
  const g = await c.getFunction('syntax');
  assert.equal(g.state, 'error');
  assert.equal(g.load_error?.type, 'SyntaxError');
  await expectApiError(c.invoke('syntax', {}), 422, 'KILN_ERR_FUNCTION_LOAD');
  assert.deepEqual((await c.invocations('syntax')).map((i) => [i.status, i.instance === null]), [['load_error', true], ['load_error', false]]);
  // A fixed version works.
  await c.updateFunction('syntax', { code: 'async function handler() { return 1; }' });
  assert.equal((await c.invoke('syntax', {})).result, 1);
  await c.deleteFunction('syntax');

  await c.createFunction({ name: 'pysyntax', runtime: 'python', code: 'def handler(event, context)\n    return 1\n', memory_mb: 128 });
  const pse = await expectApiError(c.invoke('pysyntax', {}), 422, 'KILN_ERR_FUNCTION_LOAD');
  assert.equal((pse.details as { type: string }).type, 'SyntaxError');
  assert.match(pse.message, /main\.py, line 1/);
  await c.deleteFunction('pysyntax');

  await c.createFunction({ name: 'nohandler', runtime: 'node', code: 'function other() { return 1; }\nmodule.exports = { other };', memory_mb: 128 });
  const nh = await expectApiError(c.invoke('nohandler', {}), 422, 'KILN_ERR_FUNCTION_LOAD');
  assert.equal((nh.details as { type: string }).type, 'HandlerNotFound');
  assert.match(nh.message, /exports: other/);
  await expectApiError(c.createFunction({ name: 'nohandler', runtime: 'node', code: 'x' }), 409, 'KILN_ERR_NAME_CONFLICT');
  await c.deleteFunction('nohandler');
  await expectApiError(c.getFunction('nohandler'), 404, 'KILN_ERR_FUNCTION_NOT_FOUND');
});

test('code archives with dependencies: node tar.gz with node_modules (ESM entry), python zip with a package', { skip }, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fn-archive-'));
  try {
    await fs.mkdir(path.join(dir, 'node_modules/shout'), { recursive: true });
    await fs.writeFile(path.join(dir, 'node_modules/shout/package.json'), '{"name":"shout","main":"main.js"}');
    await fs.writeFile(path.join(dir, 'node_modules/shout/main.js'), 'module.exports = (s) => s.toUpperCase() + "!";');
    await fs.writeFile(path.join(dir, 'app.mjs'), 'import shout from "shout";\nexport async function main(event) { return shout(event.word); }\n');
    const chunks: Buffer[] = [];
    for await (const ch of tar.c({ gzip: true, cwd: dir, portable: true }, ['app.mjs', 'node_modules']) as unknown as AsyncIterable<Buffer>) chunks.push(ch);
    await d.client.createFunction({ name: 'arch-node', runtime: 'node', archive: Buffer.concat(chunks).toString('base64'), handler: 'app.main', memory_mb: 128 });
    assert.equal((await d.client.invoke('arch-node', { word: 'kiln' })).result, 'KILN!');
    await d.client.deleteFunction('arch-node');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  const zip = makeZip([
    { path: 'mypkg/__init__.py', data: '' },
    { path: 'mypkg/util.py', data: 'def shout(s):\n    return s.upper() + "!"\n' },
    { path: 'app.py', data: 'from mypkg.util import shout\n\ndef main(event, context):\n    return shout(event["word"])\n' },
  ]);
  await d.client.createFunction({ name: 'arch-py', runtime: 'python', archive: zip.toString('base64'), handler: 'app.main', memory_mb: 128 });
  assert.equal((await d.client.invoke('arch-py', { word: 'kiln' })).result, 'KILN!');
  const f = await d.client.getFunction('arch-py');
  assert.equal(f.code.kind, 'zip');
  await d.client.deleteFunction('arch-py');
});

test('a custom runtime image: any image with python3 on PATH gets the shim injected', { skip }, async () => {
  // An image kiln has that carries python3 (kiln's own runtime image, used here as any image
  // would be: its /opt/kiln shim is ignored, the injected one runs).
  const img = (await d.client.listImages()).find((i) => i.name.startsWith('kiln-runtime-python-'));
  assert.ok(img, 'the python runtime image was built by an earlier test');
  await expectApiError(d.client.createFunction({ name: 'custom-bad', runtime: 'python', code: 'def handler(e, c): return 1', image: 'no-such-image' }), 404, 'KILN_ERR_IMAGE_NOT_FOUND');
  const f = await d.client.createFunction({ name: 'custom', runtime: 'python', code: 'import sys\ndef handler(e, c):\n    return sys.argv[0]\n', image: img.name, memory_mb: 128 });
  assert.equal(f.image, img.name);
  assert.equal((await d.client.invoke('custom', {})).result, '/tmp/kiln-shim.py');
  await d.client.deleteFunction('custom');
});

test('CLI: kiln fn deploy / invoke / ls / get / logs / rm', { skip }, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fn-cli-'));
  const kiln = (...args: string[]) => runKiln(d, args);

  try {
    const file = path.join(dir, 'greet.js');
    await fs.writeFile(file, 'exports.handler = async (event) => { console.log("greeting", event.who); return { hi: event.who, from: process.env.FROM }; };\n');
    const dep = await kiln('fn', 'deploy', file, '--handler', 'handler', '--env', 'FROM=cli', '--memory', '128', '--timeout', '5000', '--max-instances', '2');
    assert.equal(dep.code, 0, dep.stderr);
    assert.match(dep.stdout, /deployed greet version 1 \(node/);
    const inv = await kiln('fn', 'invoke', 'greet', '--data', '{"who":"you"}');
    assert.equal(inv.code, 0, inv.stderr);
    assert.deepEqual(JSON.parse(inv.stdout), { hi: 'you', from: 'cli' });
    const ls = await kiln('fn', 'ls');
    assert.match(ls.stdout, /greet\s.*1\s.*node/);
    const get = await kiln('--json', 'fn', 'get', 'greet');
    assert.equal(JSON.parse(get.stdout).env.FROM, 'cli');
    assert.match((await kiln('fn', 'logs', 'greet')).stdout, /greeting you/);
    const redeploy = await kiln('fn', 'deploy', file, '--env', 'FROM=v2');
    assert.match(redeploy.stdout, /updated greet version 2/);
    assert.deepEqual(JSON.parse((await kiln('fn', 'invoke', 'greet', '-d', '{"who":"me"}')).stdout), { hi: 'me', from: 'v2' });
    const bad = await kiln('fn', 'invoke', 'nope');
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /KILN_ERR_FUNCTION_NOT_FOUND/);
    assert.equal((await kiln('fn', 'rm', 'greet')).code, 0);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

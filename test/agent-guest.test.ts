// The guest agent in a real VM (QEMU, kiln's initramfs, a private bridge and tap made by the
// test): push hello, exec semantics, large output, stdin, timeouts, concurrency, files,
// status/time/logs, shutdown with the workload's exit pushed before poweroff.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { AgentClient } from '../src/guest/agent/client.ts';
import { AgentListener, type AgentProblem } from '../src/guest/agent/listener.ts';
import type { HelloMessage, WorkloadExitMessage } from '../src/guest/agent/messages.ts';
import { bootAgentVm, freeSubnet, type AgentVm } from './helpers/agent-vm.ts';

describe('guest agent in a real VM', { timeout: 600_000 }, () => {
  let vm: AgentVm;
  let listener: AgentListener;
  let client: AgentClient;
  const hellos: HelloMessage[] = [];
  const exits: WorkloadExitMessage[] = [];
  const problems: AgentProblem[] = [];
  let helloSeen: Promise<HelloMessage>;

  before(async () => {
    const subnet = await freeSubnet();
    listener = new AgentListener();
    // The bridge address does not exist until bootAgentVm makes it: listen on all, port 0.
    const { port } = await listener.listenTcp('0.0.0.0', 0);
    let onHello!: (h: HelloMessage) => void;
    helloSeen = new Promise((r) => (onHello = r));
    vm = await bootAgentVm({ hostPort: port, subnet });
    listener.expect('vm1', vm.token, {
      onHello: (h) => {
        hellos.push(h);
        onHello(h);
      },
      onExit: (e) => exits.push(e),
      onProblem: (p) => problems.push(p),
    }, { ip: vm.ip });
    client = new AgentClient({ kind: 'tcp', host: vm.ip, port: 10240 }, vm.token, { connectTimeoutMs: 10_000 });
    const hello = await Promise.race([
      helloSeen,
      vm.exited.then((c) => Promise.reject(new Error(`VM exited (${c}) before hello; console:\n${vm.console()}`))),
      new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`no hello; console:\n${vm.console()}`)), 120_000).unref()),
    ]);
    assert.equal(hello.proto, 2);
  });

  after(async () => {
    await vm?.close();
    await listener?.close();
  });

  test('hello carries the address, boot timings in order and the workload pid', () => {
    const h = hellos[0]!;
    assert.equal(h.ip, vm.ip);
    assert.equal(h.session_port, 10240);
    assert.ok(h.pid > 1);
    assert.ok(h.boot.init_ms > 0 && h.boot.init_ms <= h.boot.net_ms && h.boot.net_ms <= h.boot.root_ms, JSON.stringify(h.boot));
    assert.ok(h.boot.root_ms <= h.boot.listener_ms && h.boot.listener_ms <= h.boot.workload_ms, JSON.stringify(h.boot));
    assert.deepEqual(problems, []);
  });

  test('exec: exit codes, stdout/stderr kept apart, env and cwd', async () => {
    const r = await client.execCollect({ argv: ['/bin/sh', '-c', 'echo out; echo err >&2; echo $FOO; pwd; exit 7'], env: { FOO: 'bar' }, cwd: '/tmp' });
    assert.equal(r.exitCode, 7);
    assert.equal(r.signal, null);
    assert.equal(r.stdout.toString(), 'out\nbar\n/tmp\n');
    assert.equal(r.stderr.toString(), 'err\n');
    const ok = await client.execCollect({ argv: ['true'] });
    assert.equal(ok.exitCode, 0);
  });

  test('exec of a missing program is an error, not exit 127', async () => {
    await assert.rejects(client.execCollect({ argv: ['/no/such/program'] }), (e: { code?: string }) => e.code === 'KILN_ERR_GUEST_OP_FAILED');
  });

  test('exec: stdin is streamed through', async () => {
    const input = randomBytes(3 * 1024 * 1024);
    const r = await client.execCollect({ argv: ['sha256sum'], stdin: input });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.toString().split(' ')[0], createHash('sha256').update(input).digest('hex'));
  });

  test('exec: 100 MB of output arrives intact', async () => {
    const h = client.exec({ argv: ['/bin/sh', '-c', 'head -c 104857600 /dev/zero | tr "\\0" "k"; echo tail >&2'] });
    h.stdin.end();
    const hash = createHash('sha256');
    let n = 0;
    const errParts: Buffer[] = [];
    h.stderr.on('data', (b: Buffer) => errParts.push(b));
    for await (const c of h.stdout) {
      hash.update(c as Buffer);
      n += (c as Buffer).length;
    }
    const r = await h.result;
    assert.equal(r.exitCode, 0);
    assert.equal(n, 100 * 1024 * 1024);
    assert.equal(hash.digest('hex'), createHash('sha256').update(Buffer.alloc(100 * 1024 * 1024, 'k')).digest('hex'));
    assert.equal(Buffer.concat(errParts).toString(), 'tail\n');
  });

  test('exec: the timeout kills the whole process group', async () => {
    const r = await client.execCollect({ argv: ['/bin/sh', '-c', 'sleep 1000 & sleep 1000; echo never'], timeoutMs: 500 });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 9);
    const ps = await client.execCollect({ argv: ['/bin/sh', '-c', 'ps -o args | grep -x "[s]leep 1000" || true'] });
    assert.equal(ps.stdout.toString(), '');
  });

  test('exec: signals are forwarded', async () => {
    const h = client.exec({ argv: ['sleep', '1000'] });
    await h.started;
    h.kill(15);
    const r = await h.result;
    assert.equal(r.signal, 15);
    assert.equal(r.timedOut, false);
  });

  test('exec: concurrent sessions do not block each other', async () => {
    const slow = client.execCollect({ argv: ['sleep', '3'] });
    const quick = await Promise.all(Array.from({ length: 8 }, (_, i) => client.execCollect({ argv: ['/bin/sh', '-c', `echo ${i}`] })));
    assert.deepEqual(quick.map((r) => r.stdout.toString()), Array.from({ length: 8 }, (_, i) => `${i}\n`));
    assert.equal((await slow).exitCode, 0);
  });

  test('put/get round trip, atomic, with mode', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 17);
    const put = await client.put('/srv/deep/dir/file.bin', data, { mode: 0o640, mkdirs: true });
    assert.equal(put.bytes, data.length);
    const back = await client.getBuffer('/srv/deep/dir/file.bin');
    assert.ok(back.equals(data));
    const { mode } = await client.get('/srv/deep/dir/file.bin').then((g) => (g.stream.destroy(), g));
    assert.equal(mode, 0o640);
    const ls = await client.execCollect({ argv: ['ls', '-a', '/srv/deep/dir'] });
    assert.equal(ls.stdout.toString(), '.\n..\nfile.bin\n');
    await assert.rejects(client.getBuffer('/no/such/file'), (e: { code?: string }) => e.code === 'KILN_ERR_GUEST_PATH_NOT_FOUND');
  });

  test('status, time and logs', async () => {
    const s = await client.status();
    assert.equal(s.workload.running, true);
    assert.equal(s.ip, vm.ip);
    assert.ok(s.mem.total_kb > 0);
    const before = Date.now() * 1000;
    const t = await client.time();
    const after = Date.now() * 1000;
    // Same host clock source; TCG guests drift, so only sanity-check the order of magnitude.
    assert.ok(Math.abs(t.realtime_us - (before + after) / 2) < 60_000_000, `guest clock ${t.realtime_us} vs host ${before}`);
    const logs = await client.logs();
    assert.match(logs.data.toString(), /workload up/);
  });

  test('a wrong token gets no session', async () => {
    const bad = new AgentClient({ kind: 'tcp', host: vm.ip, port: 10240 }, 'ab'.repeat(32));
    await assert.rejects(bad.status(), (e: { code?: string }) => e.code === 'KILN_ERR_AGENT_PROTOCOL');
  });

  test('shutdown stops the workload; its exit is pushed before poweroff', async () => {
    await client.shutdown(1000);
    const code = await vm.exited;
    assert.equal(code, 0);
    assert.equal(exits.length, 1, vm.console());
    assert.equal(exits[0]!.signal, 15);
  });
});

// Issue 13 item 5 with a real VM: kilnd's side of the agent sends nothing secret to a peer that
// has not proven it holds the VM's key. The VM's control channel points at a listener the test
// runs in kilnd's place (an impostor of kilnd: it gets a hello that proves the guest but holds
// no token); sessions to the real VM work; then the VM is killed and a process in a network
// namespace on the same bridge takes over its address and agent port (an impostor of the
// guest): a session attempt with argv, env, stdin, a clone's new token and file content gives
// it only kilnd's challenge.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { helloProof } from '../src/guest/agent/auth.ts';
import { AgentClient } from '../src/guest/agent/client.ts';
import { encodeFrame, encodeKv, FrameDecoder, FrameType } from '../src/guest/agent/frame.ts';
import { run } from '../src/util/process.ts';
import { bootAgentVm, freeSubnet, type AgentVm } from './helpers/agent-vm.ts';

const SECRET = `S3CRET${randomBytes(8).toString('hex')}`;

/** The listener in kilnd's place: records what arrives before and after its challenge. */
class FakeKilnd {
  readonly server = net.createServer((s) => this.accept(s));
  beforeChallenge = 0;
  hellos: { nonce: Buffer; raw: Buffer; msg: Record<string, unknown> }[] = [];
  private onHello: (() => void)[] = [];
  private readonly sockets = new Set<net.Socket>();
  /** The first connection is never challenged: the guest must give up on it and reconnect. */
  connections = 0;
  firstClosedByGuest = false;

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }

  private accept(s: net.Socket): void {
    const n = ++this.connections;
    this.sockets.add(s);
    if (n === 1) s.on('end', () => (this.firstClosedByGuest = true));
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => {});
    const dec = new FrameDecoder();
    let nonce: Buffer | null = null;
    s.on('data', (b: Buffer) => {
      if (!nonce) {
        this.beforeChallenge += b.length;
        return;
      }
      for (const f of dec.push(b).frames) {
        this.hellos.push({ nonce, raw: f.payload, msg: JSON.parse(f.payload.toString()) });
        this.onHello.splice(0).forEach((r) => r());
      }
    });
    // Say nothing for a while: a guest must not volunteer anything before the challenge.
    const t = setTimeout(() => {
      if (s.destroyed || n === 1) return;
      nonce = randomBytes(32);
      s.write(encodeFrame(FrameType.CHALLENGE, encodeKv([['proto', 2], ['nonce', nonce.toString('hex')]])));
    }, 1500);
    t.unref();
  }

  hello(timeoutMs: number, vm: AgentVm): Promise<void> {
    if (this.hellos.length) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no hello within ${timeoutMs} ms; console:\n${vm.console()}`)), timeoutMs);
      this.onHello.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

// Runs in the impostor's namespace: listens on the agent port, answers a challenge with a made-up
// proof (it cannot make a real one), prints every frame it receives as JSON lines.
const IMPOSTOR = `
const net = require('node:net'), crypto = require('node:crypto');
net.createServer((s) => {
  let buf = Buffer.alloc(0);
  s.on('error', () => {});
  s.on('data', (b) => {
    buf = Buffer.concat([buf, b]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(0)) {
      const n = buf.readUInt32BE(0), type = buf[4], payload = buf.subarray(5, 5 + n);
      buf = buf.subarray(5 + n);
      console.log(JSON.stringify({ type, payload: payload.toString('hex') }));
      if (type === 0x63) {
        const body = Buffer.from(JSON.stringify({ type: 'challenge', proto: 2, nonce: crypto.randomBytes(32).toString('hex'), proof: crypto.randomBytes(32).toString('hex') }));
        const h = Buffer.alloc(5); h.writeUInt32BE(body.length, 0); h[4] = 0x6a;
        s.write(Buffer.concat([h, body]));
      }
    }
  });
}).listen(10240, '0.0.0.0', () => console.log('listening'));
`;

describe('agent authentication against impostors, with a real VM', { timeout: 600_000 }, () => {
  let vm: AgentVm;
  const kilnd = new FakeKilnd();
  let client: AgentClient;
  const ns = `kaimp${randomBytes(3).toString('hex')}`;
  const veth = `kai${randomBytes(3).toString('hex')}`;
  let impostor: ChildProcess | undefined;

  before(async () => {
    const subnet = await freeSubnet();
    await new Promise<void>((r) => kilnd.server.listen(0, '0.0.0.0', () => r()));
    vm = await bootAgentVm({ hostPort: (kilnd.server.address() as net.AddressInfo).port, subnet });
    client = new AgentClient({ kind: 'tcp', host: vm.ip, port: 10240 }, vm.token, { connectTimeoutMs: 10_000 });
    await kilnd.hello(180_000, vm);
  });

  after(async () => {
    impostor?.kill('SIGKILL');
    await run('ip', ['netns', 'del', ns]).catch(() => {});
    await run('ip', ['link', 'del', `${veth}h`]).catch(() => {});
    kilnd.close();
    await vm?.close();
  });

  test('a listener in kilnd\'s place gets nothing before its challenge, and a hello without the token', () => {
    assert.equal(kilnd.beforeChallenge, 0, 'the guest volunteered bytes before the challenge');
    assert.ok(kilnd.connections >= 2 && kilnd.firstClosedByGuest, 'a listener that never challenges is dropped and the guest reconnects');
    const h = kilnd.hellos[0]!;
    assert.ok(!h.raw.toString('latin1').includes(vm.token), `the hello carries the token: ${h.raw}`);
    assert.equal(h.msg.proto, 2);
    assert.equal(h.msg.key_id, createHash('sha256').update(vm.token).digest('hex'));
    // It is the real guest: its proof checks out under the VM's token, over this listener's nonce.
    assert.equal(h.msg.proof, helloProof(vm.token, h.nonce, Buffer.from(String(h.msg.nonce), 'hex')).toString('hex'));
  });

  test('sessions to the real VM work: exec with argv, env and stdin, put and get', async () => {
    const r = await client.execCollect({ argv: ['/bin/sh', '-c', 'echo "$A $1"; cat', 'sh', SECRET], env: { A: SECRET }, stdin: SECRET });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.toString(), `${SECRET} ${SECRET}\n${SECRET}`);
    await client.put('/tmp/secret', Buffer.from(SECRET));
    assert.equal((await client.getBuffer('/tmp/secret')).toString(), SECRET);
  });

  test('a client holding another key is refused by the real guest and learns nothing', async () => {
    const wrong = new AgentClient({ kind: 'tcp', host: vm.ip, port: 10240 }, randomBytes(32).toString('hex'));
    await assert.rejects(wrong.status(), (e: { code?: string; details?: { reason?: string } }) => e.code === 'KILN_ERR_AGENT_PROTOCOL' && e.details?.reason === 'bad_proof');
  });

  test('a process that takes over the VM\'s address and agent port receives only the challenge', async () => {
    vm.proc.kill('SIGKILL');
    await vm.exited;
    await run('ip', ['netns', 'add', ns]);
    await run('ip', ['link', 'add', `${veth}h`, 'type', 'veth', 'peer', 'name', `${veth}g`]);
    await run('ip', ['link', 'set', `${veth}g`, 'netns', ns]);
    await run('ip', ['link', 'set', `${veth}h`, 'master', vm.bridge, 'up']);
    await run('ip', ['-n', ns, 'addr', 'add', `${vm.ip}/24`, 'dev', `${veth}g`]);
    await run('ip', ['-n', ns, 'link', 'set', `${veth}g`, 'up']);
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    await run('ip', ['neigh', 'flush', 'to', vm.ip]).catch(() => {});
    impostor = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', IMPOSTOR], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    impostor.stdout!.on('data', (b) => (out += b));
    const deadline = Date.now() + 10_000;
    while (!out.includes('listening') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(out.includes('listening'), 'the impostor is up');

    const attempts: [string, () => Promise<unknown>][] = [
      ['exec', () => client.execCollect({ argv: ['/bin/echo', SECRET], env: { K: SECRET }, stdin: SECRET })],
      ['put', () => client.put('/etc/secret', Buffer.from(SECRET))],
      ['identity', () => client.identity({ hostname: 'h', token: SECRET, entropy: randomBytes(16) })],
    ];
    for (const [what, attempt] of attempts) {
      await assert.rejects(attempt(), (e: { code?: string; details?: { reason?: string } }) => {
        assert.equal(e.code, 'KILN_ERR_AGENT_PROTOCOL', `${what}: ${String(e)}`);
        assert.equal(e.details?.reason, 'bad_proof', what);
        return true;
      });
    }
    await new Promise((r) => setTimeout(r, 300));
    const frames = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { type: number; payload: string });
    assert.equal(frames.length, attempts.length, `one frame per attempt: ${out}`);
    for (const f of frames) {
      assert.equal(f.type, FrameType.CHALLENGE);
      const text = Buffer.from(f.payload, 'hex').toString('latin1');
      assert.match(text, /^proto=2\0nonce=[0-9a-f]{64}\0$/);
    }
    const all = Buffer.from(frames.map((f) => f.payload).join(''), 'hex').toString('latin1');
    assert.ok(!all.includes(SECRET) && !all.includes(vm.token), 'no secret, no token');
  });
});


import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { helloProof } from './auth.ts';
import { until as untilWithin } from '../../../test/helpers/until.ts';
import { encodeFrame, FrameType } from './frame.ts';
import { AgentListener, type AgentProblem } from './listener.ts';
import type { HelloMessage, WorkloadExitMessage } from './messages.ts';

const TOKEN = 'a1'.repeat(32);
type Peer = net.Socket & { nonce: Buffer };
/** A hello answering `s`'s challenge as kiln-init does, with the proof made under `token`. */
const hello = (s: Peer, token = TOKEN, extra: Record<string, unknown> = {}) => {
  const guestNonce = randomBytes(32);
  return encodeFrame(FrameType.JSON, JSON.stringify({
    type: 'hello', proto: 2, agent: '0.2.0', key_id: createHash('sha256').update(token).digest('hex'),
    nonce: guestNonce.toString('hex'), proof: helloProof(token, s.nonce, guestNonce).toString('hex'),
    ip: '127.0.0.1', session_port: 10240, vsock_port: 0, pid: 40, connects: 1,
    boot: { init_ms: 1, net_ms: 2, root_ms: 3, listener_ms: 4, workload_ms: 5 }, uptime_ms: 6, realtime_us: 7, ...extra,
  }));
};

let listener: AgentListener;
let port: number;
let events: { hello: HelloMessage[]; exit: WorkloadExitMessage[]; problems: AgentProblem[]; disconnects: number };

function watch(vmId = 'vm1', token = TOKEN) {
  events = { hello: [], exit: [], problems: [], disconnects: 0 };
  listener.expect(vmId, token, {
    onHello: (h) => events.hello.push(h),
    onExit: (e) => events.exit.push(e),
    onProblem: (p) => events.problems.push(p),
    onDisconnect: () => events.disconnects++,
  }, { ip: '127.0.0.1' });
}

/** Connects and waits for kilnd's challenge (the first thing it sends, before any hello). */
function peer(unixPath?: string, tcpPort = port): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const s = (unixPath ? net.createConnection(unixPath) : net.createConnection({ host: '127.0.0.1', port: tcpPort })) as Peer;
    s.on('error', reject);
    s.once('data', (b: Buffer) => {
      const m = /^proto=2\0nonce=([0-9a-f]{64})\0$/.exec(b.subarray(5).toString('latin1'));
      if (b[4] !== FrameType.CHALLENGE || !m) return reject(new Error(`not a challenge: ${b.toString('latin1')}`));
      s.nonce = Buffer.from(m[1]!, 'hex');
      s.removeListener('error', reject);
      resolve(s);
    });
  });
}

/** Resolves when the socket closes; fails the test if it stays open past the deadline. */
const closed = (s: net.Socket, timeoutMs = 5000) =>
  new Promise<void>((resolve, reject) => {
    if (s.destroyed) return resolve();
    const timer = setTimeout(() => reject(new Error(`the connection stayed open for ${timeoutMs} ms`)), timeoutMs);
    s.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
/** The listener answers on loopback within milliseconds: a short deadline, polled often. */
const until = (what: string, cond: () => boolean) => untilWithin(what, cond, 5000, 5);

before(async () => {
  listener = new AgentListener({ authDeadlineMs: 300 });
  port = (await listener.listenTcp('127.0.0.1', 0)).port;
});
after(() => listener.close());

test('hello then exit: callbacks fire, the listener closes so the guest may power off', async () => {
  watch();
  const s = await peer();
  s.on('error', () => {});
  s.write(hello(s));
  await until('the hello', () => events.hello.length === 1);
  assert.ok(listener.connected('vm1'));
  s.write(encodeFrame(FrameType.JSON, '{"type":"exit","code":0,"uptime_ms":99}'));
  await closed(s);
  assert.deepEqual(events.exit, [{ type: 'exit', code: 0, uptime_ms: 99 }]);
  assert.deepEqual(events.problems, []);
});

test('a reconnect (kilnd or network blip) replaces the old connection and says hello again', async () => {
  watch();
  const a = await peer();
  a.write(hello(a));
  await until('the hello', () => events.hello.length === 1);
  const b = await peer();
  b.write(hello(b, TOKEN, { connects: 2 }));
  await closed(a);
  await until('the second hello', () => events.hello.length === 2);
  assert.equal(events.hello[1]!.connects, 2);
  assert.ok(listener.connected('vm1'));
  b.destroy();
  await until('vm1 disconnected', () => !listener.connected('vm1'));
});

// A proof made for another challenge (a recorded hello) is worthless.
const replayed = (_s: Peer) => hello(Object.assign(Object.create(null) as Peer, { nonce: randomBytes(32) }));
for (const [name, bytes, reason] of [
  ['garbage', () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 'garbage'],
  ['an oversized frame', () => Buffer.from([0x7f, 0xff, 0xff, 0xff, FrameType.JSON]), 'oversized'],
  ['a proof under another key', (s: Peer) => hello(s, 'b2'.repeat(32)), 'bad_token'],
  ['a proof under another key claiming this VM', (s: Peer) => {
    const h = JSON.parse(hello(s, 'b2'.repeat(32)).subarray(5).toString());
    return encodeFrame(FrameType.JSON, JSON.stringify({ ...h, key_id: createHash('sha256').update(TOKEN).digest('hex') }));
  }, 'bad_token'],
  ['a proof for another challenge (replay)', replayed, 'bad_token'],
  ['a v1 hello with the token in it', () => encodeFrame(FrameType.JSON, JSON.stringify({ type: 'hello', proto: 1, token: TOKEN })), 'schema'],
  ['a schema violation', () => encodeFrame(FrameType.JSON, '{"type":"hello","proto":"one"}'), 'schema'],
  ['stdout on the control channel', () => encodeFrame(FrameType.STDOUT, 'hi'), 'unexpected'],
] as const) {
  test(`a peer sending ${name} is cut off and reported against the VM with that address`, async () => {
    watch();
    const s = await peer();
    s.on('error', () => {});
    s.write(bytes(s));
    await closed(s);
    await until('the problem reported', () => events.problems.length === 1);
    assert.equal(events.problems[0]!.reason, reason);
    assert.equal(events.hello.length, 0);
  });
}

test('a peer that never says hello is cut off at the deadline', async () => {
  watch();
  const s = await peer();
  await closed(s);
  assert.equal(events.problems[0]?.reason, 'deadline');
});

test('a peer that dribbles forever past its byte budget is cut off', async () => {
  watch();
  const s = await peer();
  s.on('error', () => {});
  s.write(hello(s));
  await until('the hello', () => events.hello.length === 1);
  // Valid-looking frames, never an exit: a chatty or malicious guest.
  const spam = encodeFrame(FrameType.JSON, JSON.stringify({ type: 'exit', pad: 'x'.repeat(10_000) }));
  for (let i = 0; i < 20 && !s.destroyed; i++) s.write(spam);
  await closed(s);
  assert.ok(['excess', 'schema'].includes(events.problems[0]!.reason), events.problems[0]!.reason);
});

test('a throwing callback does not take the listener down', async () => {
  const logged: string[] = [];
  const own = new AgentListener({ authDeadlineMs: 300, log: (msg, fields) => logged.push(`${msg} ${JSON.stringify(fields)}`) });
  const ownPort = (await own.listenTcp('127.0.0.1', 0)).port;
  const connect = () => peer(undefined, ownPort);
  try {
    // Its own token: only this VM's callbacks can receive the hello.
    const THROWER = 'c3'.repeat(32);
    const thrown = { hello: 0, exit: 0 };
    const problems: AgentProblem[] = [];
    own.expect('thrower', THROWER, {
      onHello: () => {
        thrown.hello++;
        throw new Error('boom in onHello');
      },
      onExit: () => {
        thrown.exit++;
        throw new Error('boom in onExit');
      },
      onProblem: (p) => problems.push(p),
    });
    const bystander: HelloMessage[] = [];
    own.expect('bystander', TOKEN, { onHello: (h) => bystander.push(h), onExit: () => {}, onProblem: () => {} });

    const s = await connect();
    s.write(hello(s, THROWER));
    await until('the throwing onHello to run', () => thrown.hello === 1);
    // The hello counted despite the throw: the connection is the VM's authenticated one.
    assert.ok(own.connected('thrower'));
    assert.ok(logged.some((l) => /onHello callback threw/.test(l) && /boom in onHello/.test(l)), logged.join('\n'));
    // The exit still closes the connection (the guest's signal that it may power off).
    s.write(encodeFrame(FrameType.JSON, '{"type":"exit","code":0,"uptime_ms":1}'));
    await closed(s);
    assert.equal(thrown.exit, 1);
    assert.ok(logged.some((l) => /onExit callback threw/.test(l)), logged.join('\n'));
    assert.deepEqual(problems, [], 'a well-behaved guest whose callbacks throw is not reported');

    // The listener still serves: another VM's agent connects and is heard.
    const t = await connect();
    t.write(hello(t, TOKEN));
    await until('the bystander hello', () => bystander.length === 1);
    assert.equal(bystander[0]!.key_id, createHash('sha256').update(TOKEN).digest('hex'));
    assert.ok(own.connected('bystander'));
    t.destroy();
  } finally {
    await own.close();
  }
});

test('Unix socket variant (Firecracker <uds>_<port>): attributed to its VM even before auth', async () => {
  watch('vm3');
  const p = path.join(os.tmpdir(), `kiln-agent-${process.pid}.sock_10240`);
  const stop = await listener.listenUnix(p, 'vm3');
  try {
    const s = await peer(p);
    s.on('error', () => {});
    s.write(Buffer.from('\xff\xff\xff\xff\x6agarbage', 'latin1'));
    await closed(s);
    await until('the problem reported', () => events.problems.length === 1);
    assert.equal(events.problems[0]!.reason, 'oversized');
    const ok = await peer(p);
    ok.write(hello(ok));
    await until('the hello', () => events.hello.length === 1);
    ok.destroy();
  } finally {
    await stop();
  }
});

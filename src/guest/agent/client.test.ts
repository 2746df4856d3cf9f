import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, test } from 'node:test';
import { KilnError } from '../../errors.ts';
import { AgentClient } from './client.ts';
import { guestSessionProof, hostSessionProof } from './auth.ts';
import { encodeFrame, FrameDecoder, FrameType, type Frame } from './frame.ts';

// A scripted guest holding `key` (the VM's token unless told otherwise): it answers the
// session challenge as kiln-init does, checks kilnd's proof on the OPEN frame, then `script`
// sees the request and every later frame. `log` records every frame kilnd sent it.
type Script = (sock: net.Socket, open: Record<string, string[]>, frames: AsyncIterable<Frame>) => unknown;
const servers: net.Server[] = [];
after(() => servers.forEach((s) => s.close()));
const TOKEN = 'cd'.repeat(32);

async function fakeGuest(script: Script, opts: { key?: string; log?: Frame[] } = {}): Promise<AgentClient> {
  const key = opts.key ?? TOKEN;
  const server = net.createServer((sock) => {
    sock.on('error', () => {});
    const d = new FrameDecoder();
    const queue: Frame[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    sock.on('data', (c) => {
      const got = d.push(c).frames;
      opts.log?.push(...got);
      queue.push(...got);
      wake?.();
    });
    sock.on('close', () => {
      ended = true;
      wake?.();
    });
    const frames = (async function* () {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    })();
    void (async () => {
      const challenge = await frames.next();
      if (challenge.done || challenge.value.type !== FrameType.CHALLENGE) return sock.destroy();
      const hostNonce = Buffer.from(kvOf(challenge.value.payload).nonce?.[0] ?? '', 'hex');
      const guestNonce = randomBytes(32);
      sock.write(json({ type: 'challenge', proto: 2, nonce: guestNonce.toString('hex'), proof: guestSessionProof(key, hostNonce, guestNonce).toString('hex') }));
      const first = await frames.next();
      if (first.done) return;
      const p = first.value.payload;
      const request = p.subarray(69);
      if (first.value.type !== FrameType.OPEN || p.subarray(0, 4).toString() !== 'mac=' || p.subarray(4, 68).toString() !== hostSessionProof(key, hostNonce, guestNonce, request).toString('hex')) {
        return sock.end(json({ type: 'error', code: 'bad_token', errno: 13, message: 'authentication failed' }));
      }
      await script(sock, kvOf(request), frames);
    })();
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as net.AddressInfo;
  return new AgentClient({ kind: 'tcp', host: '127.0.0.1', port }, TOKEN, { connectTimeoutMs: 1000, opTimeoutMs: 300 });
}

function kvOf(payload: Buffer): Record<string, string[]> {
  const kv: Record<string, string[]> = {};
  for (const e of payload.toString().split('\0').filter(Boolean)) {
    const i = e.indexOf('=');
    (kv[e.slice(0, i)] ??= []).push(e.slice(i + 1));
  }
  return kv;
}

const json = (v: unknown) => encodeFrame(FrameType.JSON, JSON.stringify(v));
const code = (c: string) => (e: unknown) => e instanceof KilnError && e.code === c;

test('the open frame carries protocol version, op and arguments, never the token', async () => {
  let seen: Record<string, string[]> = {};
  const c = await fakeGuest((s, kv) => {
    seen = kv;
    s.end(json({ type: 'time', realtime_us: 5, boottime_us: 6, ready_boottime_us: 4 }));
  });
  assert.deepEqual(await c.time(), { type: 'time', realtime_us: 5, boottime_us: 6, ready_boottime_us: 4 });
  assert.deepEqual(seen, { proto: ['2'], op: ['time'] });
});

test('a peer without the VM key gets only the challenge: no token, argv, env or stdin', async () => {
  const log: Frame[] = [];
  const impostor = await fakeGuest(() => assert.fail('the impostor must never see a request'), { key: 'ef'.repeat(32), log });
  const secret = 'SECRET-' + randomBytes(8).toString('hex');
  await assert.rejects(
    impostor.execCollect({ argv: ['echo', secret], env: { K: secret }, stdin: secret }),
    (e: unknown) => e instanceof KilnError && e.code === 'KILN_ERR_AGENT_PROTOCOL' && (e.details as { reason?: string }).reason === 'bad_proof',
  );
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(log.map((f) => f.type), [FrameType.CHALLENGE], 'only the challenge was sent');
  const all = Buffer.concat(log.map((f) => f.payload)).toString('latin1');
  assert.ok(!all.includes(secret) && !all.includes(TOKEN), `the impostor received ${JSON.stringify(all)}`);
  assert.match(all, /^proto=2\0nonce=[0-9a-f]{64}\0$/);
});

test('a guest that never answers hits the deadline', async () => {
  const c = await fakeGuest(() => {});
  await assert.rejects(c.status(), code('KILN_ERR_AGENT_TIMEOUT'));
});

test('garbage, oversized frames, schema violations and truncation are protocol errors', async () => {
  for (const bytes of [
    Buffer.from('HTTP/1.1 200 OK\r\n\r\n'),
    Buffer.from([0x7f, 0, 0, 0, FrameType.JSON]),
    json({ type: 'time', realtime_us: -1, boottime_us: 0 }),
    json({ type: 'status' }),
    encodeFrame(FrameType.JSON, '{"type":"time"').subarray(0, 9),
  ]) {
    const c = await fakeGuest((s) => s.end(bytes));
    await assert.rejects(c.time(), code('KILN_ERR_AGENT_PROTOCOL'), bytes.toString('latin1'));
  }
});

test('guest errors map to kiln error codes', async () => {
  const nf = await fakeGuest((s) => s.end(json({ type: 'error', code: 'not_found', errno: 2, message: 'open /x' })));
  await assert.rejects(nf.getBuffer('/x'), code('KILN_ERR_GUEST_PATH_NOT_FOUND'));
  const tok = await fakeGuest((s) => s.end(json({ type: 'error', code: 'bad_token', errno: 13, message: 'authentication failed' })));
  await assert.rejects(tok.status(), code('KILN_ERR_AGENT_PROTOCOL'));
  const ex = await fakeGuest((s) => s.end(json({ type: 'error', code: 'exec_failed', errno: 2, message: 'nope: No such file' })));
  await assert.rejects(ex.execCollect({ argv: ['nope'] }), code('KILN_ERR_GUEST_OP_FAILED'));
});

test('nothing listening is AGENT_UNAVAILABLE', async () => {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  await assert.rejects(new AgentClient({ kind: 'tcp', host: '127.0.0.1', port }, 'aa').status(), code('KILN_ERR_AGENT_UNAVAILABLE'));
});

test('exec streams stdout/stderr apart, sends stdin with EOF, and forwards signals', async () => {
  const c = await fakeGuest(async (s, kv, frames) => {
    assert.deepEqual(kv.argv, ['cat', '-n']);
    assert.deepEqual(kv.env, ['A=1']);
    s.write(json({ type: 'started', pid: 77 }));
    let stdin = '';
    for await (const f of frames) {
      if (f.type === FrameType.STDIN) stdin += f.payload.toString();
      if (f.type === FrameType.SIGNAL) s.write(encodeFrame(FrameType.STDERR, `sig ${f.payload.toString()}`));
      if (f.type === FrameType.EOF) break;
    }
    s.write(encodeFrame(FrameType.STDOUT, stdin.toUpperCase()));
    s.end(json({ type: 'exit', code: 3, timed_out: false }));
  });
  const h = c.exec({ argv: ['cat', '-n'], env: { A: '1' } });
  assert.deepEqual(await h.started, { pid: 77 });
  h.kill(2);
  h.stdin.end('hello');
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  h.stdout.on('data', (b) => out.push(b));
  h.stderr.on('data', (b) => err.push(b));
  assert.deepEqual(await h.result, { exitCode: 3, signal: null, timedOut: false });
  assert.equal(Buffer.concat(out).toString(), 'HELLO');
  assert.equal(Buffer.concat(err).toString(), 'sig signal=2\0');
});

test('execCollect caps output and says so', async () => {
  const c = await fakeGuest((s) => {
    s.write(json({ type: 'started', pid: 2 }));
    s.write(encodeFrame(FrameType.STDOUT, Buffer.alloc(5000, 'a')));
    s.end(json({ type: 'exit', signal: 9, timed_out: true }));
  });
  const r = await c.execCollect({ argv: ['x'], maxOutputBytes: 1000 });
  assert.equal(r.stdout.length, 1000);
  assert.equal(r.truncated, true);
  assert.equal(r.signal, 9);
  assert.equal(r.timedOut, true);
});

test('an exec exit with neither code nor signal is refused', async () => {
  const c = await fakeGuest((s) => {
    s.write(json({ type: 'started', pid: 2 }));
    s.end(json({ type: 'exit', timed_out: false }));
  });
  await assert.rejects(c.execCollect({ argv: ['x'] }), code('KILN_ERR_AGENT_PROTOCOL'));
});

test('get refuses more bytes than announced; put streams data then EOF', async () => {
  const g = await fakeGuest((s) => {
    s.write(json({ type: 'file', size: 3, mode: 420 }));
    s.write(encodeFrame(FrameType.DATA, 'abcdef'));
    s.end(json({ type: 'done', bytes: 6 }));
  });
  await assert.rejects(g.getBuffer('/f'), code('KILN_ERR_AGENT_PROTOCOL'));
  let received = '';
  const p = await fakeGuest(async (s, kv, frames) => {
    assert.deepEqual(kv.path, ['/f']);
    assert.deepEqual(kv.mode, ['384']);
    s.write(json({ type: 'ready' }));
    for await (const f of frames) {
      if (f.type === FrameType.DATA) received += f.payload.toString();
      if (f.type === FrameType.EOF) break;
    }
    s.end(json({ type: 'done', bytes: received.length }));
  });
  assert.deepEqual(await p.put('/f', Buffer.from('payload'), { mode: 0o600 }), { bytes: 7 });
  assert.equal(received, 'payload');
});

test('aborting an exec closes the session (the guest then kills the process group)', async () => {
  let guestSawClose!: () => void;
  const closed = new Promise<void>((r) => (guestSawClose = r));
  const c = await fakeGuest((s) => {
    s.write(json({ type: 'started', pid: 2 }));
    s.on('close', () => guestSawClose());
  });
  const ac = new AbortController();
  const h = c.exec({ argv: ['sleep'], signal: ac.signal });
  await h.started;
  ac.abort();
  await assert.rejects(h.result, code('KILN_ERR_AGENT_UNAVAILABLE'));
  await closed;
});

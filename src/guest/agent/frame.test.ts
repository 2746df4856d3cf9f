import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentProtocolError, encodeFrame, encodeKv, FRAME_MAX, FrameDecoder, FrameType } from './frame.ts';
import { HelloMessage, parseMessage, WorkloadExitMessage } from './messages.ts';

test('frames round-trip whatever way the stream is split', () => {
  const frames = [
    encodeFrame(FrameType.JSON, '{"type":"ready"}'),
    encodeFrame(FrameType.STDOUT, Buffer.alloc(70_000, 7)),
    encodeFrame(FrameType.STDERR),
    encodeFrame(FrameType.DATA, Buffer.from([0, 1, 2])),
  ];
  const wire = Buffer.concat(frames);
  for (const step of [1, 3, 5, 4096, wire.length]) {
    const d = FrameDecoder.forGuest();
    const got = [];
    for (let i = 0; i < wire.length; i += step) {
      const r = d.push(wire.subarray(i, i + step));
      assert.equal(r.error, undefined);
      got.push(...r.frames);
    }
    assert.equal(d.end(), undefined);
    assert.deepEqual(got.map((f) => f.type), [FrameType.JSON, FrameType.STDOUT, FrameType.STDERR, FrameType.DATA]);
    assert.equal(got[1]!.payload.length, 70_000);
    assert.equal(got[2]!.payload.length, 0);
    assert.deepEqual([...got[3]!.payload], [0, 1, 2]);
  }
});

test('an oversized length is refused from the header alone, before buffering the body', () => {
  const d = FrameDecoder.forGuest(1024);
  const h = Buffer.alloc(5);
  h.writeUInt32BE(1025, 0);
  h[4] = FrameType.JSON;
  const r = d.push(h);
  assert.ok(r.error instanceof AgentProtocolError);
  assert.equal(r.error.reason, 'oversized');
  assert.equal(d.buffered, 0);
  // It stays failed.
  assert.equal(d.push(encodeFrame(FrameType.JSON, '{}')).error?.reason, 'oversized');
  assert.throws(() => encodeFrame(FrameType.DATA, Buffer.alloc(FRAME_MAX + 1)), RangeError);
});

test('garbage (unknown frame types) and truncated streams are typed errors, not throws', () => {
  const d = FrameDecoder.forGuest();
  const r = d.push(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
  assert.equal(r.error?.reason, 'garbage');
  const t = FrameDecoder.forGuest();
  assert.equal(t.push(encodeFrame(FrameType.JSON, '{"a":1}').subarray(0, 8)).error, undefined);
  assert.equal(t.end()?.reason, 'truncated');
});

test('key=value encoding refuses what kiln-init could misparse', () => {
  assert.equal(encodeKv([['op', 'exec'], ['argv', 'a=b c']]).toString(), 'op=exec\0argv=a=b c\0');
  assert.throws(() => encodeKv([['argv', 'a\0b']]), RangeError);
  assert.throws(() => encodeKv([['bad=key', 'x']]), RangeError);
});

test('guest messages are schema-checked: hostile JSON becomes a typed error', () => {
  const hello = {
    type: 'hello', proto: 2, agent: '0.2.0', key_id: 'ab'.repeat(32), nonce: 'cd'.repeat(32), proof: 'ef'.repeat(32), ip: '10.0.0.2', session_port: 10240, vsock_port: 0, pid: 40, connects: 1,
    boot: { init_ms: 1, net_ms: 2, root_ms: 3, listener_ms: 4, workload_ms: 5 }, uptime_ms: 6, realtime_us: 7,
  };
  const ok = parseMessage(Buffer.from(JSON.stringify(hello)), HelloMessage);
  assert.ok(!(ok instanceof AgentProtocolError));
  const cases: [unknown, string][] = [
    [{ ...hello, pid: -1 }, 'schema'],
    [{ ...hello, ip: 'x'.repeat(100) }, 'schema'],
    [{ ...hello, boot: null }, 'schema'],
    [{ type: 'nonsense' }, 'unexpected'],
    [[1, 2], 'garbage'],
    ['just a string', 'garbage'],
  ];
  for (const [v, reason] of cases) {
    const r = parseMessage(Buffer.from(JSON.stringify(v)), HelloMessage);
    assert.ok(r instanceof AgentProtocolError, JSON.stringify(v));
    assert.equal(r.reason, reason, JSON.stringify(v));
  }
  assert.equal((parseMessage(Buffer.from('{"type":'), HelloMessage) as AgentProtocolError).reason, 'garbage');
  assert.equal((parseMessage(Buffer.from(`{"type":"exit","pad":"${'x'.repeat(20_000)}"}`), WorkloadExitMessage) as AgentProtocolError).reason, 'oversized');
  const exit = parseMessage(Buffer.from('{"type":"exit","code":3}'), WorkloadExitMessage);
  assert.deepEqual(exit, { type: 'exit', code: 3 });
});

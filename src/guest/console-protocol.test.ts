import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseMarker, parseOutputLine, stopCommand, stripMarkers } from './console-protocol.ts';

test('parses kiln-init markers with fields, tolerating CR', () => {
  assert.deepEqual(parseMarker('@kiln:ready uptime_ms=2414 root_ms=538 pid=82\r'), {
    event: 'ready',
    fields: { uptime_ms: '2414', root_ms: '538', pid: '82' },
  });
  assert.deepEqual(parseMarker('@kiln:poweroff'), { event: 'poweroff', fields: {} });
});

test('a forged marker carries at most 16 short fields with plain keys', () => {
  const m = parseMarker(`@kiln:warn ${[...Array(100).keys()].map((i) => `k${'x'.repeat(i % 5)}_${String.fromCharCode(97 + (i % 26))}=${'v'.repeat(1000)}`).join(' ')} __proto__=x Bad=1`)!;
  assert.equal(Object.keys(m.fields).length, 16);
  assert.ok(Object.values(m.fields).every((v) => v.length === 256));
  assert.ok(Object.keys(m.fields).every((k) => /^[a-z_]+$/.test(k)));
  assert.equal(JSON.stringify(m).length < 16 * 300, true);
});

test('an escaped workload line (leading space) or junk is not a marker', () => {
  assert.equal(parseMarker(' @kiln:ready uptime_ms=1'), null);
  assert.equal(parseMarker('hello @kiln:ready'), null);
  assert.equal(parseMarker('@kiln:'), null);
  assert.equal(parseMarker('@kiln:READY!'), null);
});

test('stop command and marker stripping', () => {
  assert.equal(stopCommand(1500.4), '@kiln:stop grace_ms=1500\n');
  assert.equal(stripMarkers('a\n@kiln:boot uptime_ms=1\r\nb\n @kiln:fake\n'), 'a\nb\n @kiln:fake\n');
});

test('tagged workload output: stream, text (spaces and markers kept verbatim) and partial pieces', () => {
  assert.deepEqual(parseOutputLine('@kiln:1 hello  world'), { stream: 'stdout', text: 'hello  world', partial: false });
  assert.deepEqual(parseOutputLine('@kiln:2+ @kiln:exit code=0'), { stream: 'stderr', text: '@kiln:exit code=0', partial: true });
  assert.deepEqual(parseOutputLine('@kiln:1 '), { stream: 'stdout', text: '', partial: false });
  assert.equal(parseOutputLine('@kiln:exit code=0'), null);
  assert.equal(parseOutputLine('@kiln:3 x'), null);
  assert.equal(parseOutputLine('@kiln:1x'), null);
  assert.equal(parseOutputLine(' @kiln:1 x'), null);
  // Tagged pieces are control lines: the VM's console log hides them.
  assert.equal(stripMarkers('boot\n@kiln:1 out\nend'), 'boot\nend');
});

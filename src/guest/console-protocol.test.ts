import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseMarker, stopCommand, stripMarkers } from './console-protocol.ts';

test('parses kiln-init markers with fields, tolerating CR', () => {
  assert.deepEqual(parseMarker('@kiln:ready uptime_ms=2414 root_ms=538 pid=82\r'), {
    event: 'ready',
    fields: { uptime_ms: '2414', root_ms: '538', pid: '82' },
  });
  assert.deepEqual(parseMarker('@kiln:poweroff'), { event: 'poweroff', fields: {} });
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

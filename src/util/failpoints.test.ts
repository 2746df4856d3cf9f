import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseFailpoints } from './failpoints.ts';

test('KILN_FAILPOINTS lists <name>=crash items', () => {
  assert.deepEqual([...parseFailpoints('vmm.spawn:after=crash, rootfs.prepare:before=crash')], [
    ['vmm.spawn:after', 'crash'],
    ['rootfs.prepare:before', 'crash'],
  ]);
  assert.equal(parseFailpoints(undefined).size, 0);
  assert.equal(parseFailpoints('').size, 0);
});

test('anything else stops kilnd at start rather than being ignored', () => {
  assert.throws(() => parseFailpoints('vmm.spawn:after'), /not <name>=crash/);
  assert.throws(() => parseFailpoints('vmm.spawn:after=sleep'), /not <name>=crash/);
  assert.throws(() => parseFailpoints('=crash'), /not <name>=crash/);
});

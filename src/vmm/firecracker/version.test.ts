import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { assertSupported, atLeast, capabilitiesOf, parseFirecrackerVersion } from './version.ts';

test('parses the forms Firecracker reports its version in', () => {
  assert.deepEqual(parseFirecrackerVersion('1.13.1'), { raw: '1.13.1', major: 1, minor: 13, patch: 1 });
  assert.deepEqual(parseFirecrackerVersion('v1.16.1'), { raw: '1.16.1', major: 1, minor: 16, patch: 1 });
  assert.equal(parseFirecrackerVersion('Firecracker v1.14.0\n\nSupported snapshot data format versions: 5.0.0')?.minor, 14);
  assert.equal(parseFirecrackerVersion('1.16.0-dev')?.raw, '1.16.0-dev');
  assert.equal(parseFirecrackerVersion('firecracker'), null);
});

test('fields only in the v1.16.1 definition are enabled from 1.16.0 on, not for 1.13–1.15', () => {
  const c113 = capabilitiesOf(parseFirecrackerVersion('1.13.1')!);
  const c115 = capabilitiesOf(parseFirecrackerVersion('1.15.1')!);
  const c116 = capabilitiesOf(parseFirecrackerVersion('1.16.0')!);
  for (const c of [c113, c115]) {
    assert.equal(c.networkOverrides, true, 'network_overrides is in the 1.13.1 definition');
    assert.equal(c.vsockOverride, false);
    assert.equal(c.clockRealtime, false);
    assert.equal(c.netMtu, false);
  }
  assert.equal(c116.vsockOverride, true);
  assert.equal(c116.clockRealtime, true);
  assert.equal(c116.netMtu, true);
  assert.equal(capabilitiesOf(parseFirecrackerVersion('2.0.0')!).vsockOverride, true);
});

test('versions compare numerically', () => {
  assert.equal(atLeast(parseFirecrackerVersion('1.9.0')!, 1, 13), false);
  assert.equal(atLeast(parseFirecrackerVersion('1.13.0')!, 1, 13), true);
  assert.equal(atLeast(parseFirecrackerVersion('1.100.0')!, 1, 16), true);
});

test('releases older than 1.13 are refused with a host-setup error', () => {
  assert.throws(
    () => assertSupported(parseFirecrackerVersion('1.12.1')!),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /1\.12\.1/.test(e.message),
  );
  assertSupported(parseFirecrackerVersion('1.13.0')!);
});

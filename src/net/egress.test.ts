import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../errors.ts';
import { egressView, normalizeEgress, parseCidr, parseEgressFlag } from './egress.ts';

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    return (e as KilnError).code;
  }
  return 'no error';
};

test('egress names and allow-lists normalise, and read back as given', () => {
  assert.deepEqual(normalizeEgress(undefined), { internet: true, allow: [] });
  assert.deepEqual(normalizeEgress('none'), { internet: false, allow: [] });
  assert.deepEqual(normalizeEgress({ allow: ['10.1.0.0/16', '10.1.0.0/16', '192.0.2.7'] }), { internet: false, allow: ['10.1.0.0/16', '192.0.2.7/32'] });
  assert.equal(egressView(normalizeEgress('internet')), 'internet');
  assert.equal(egressView(normalizeEgress('none')), 'none');
  assert.deepEqual(egressView(normalizeEgress({ allow: ['10.0.0.0/8'], internet: true })), { allow: ['10.0.0.0/8'], internet: true });
});

test('bad CIDRs get KILN_ERR_VALIDATION with the entry named', () => {
  for (const bad of ['10.0.0.1/8', '10.0.0.0/33', '300.1.1.1/32', 'fd00::/8', '10.0.0/24', '', '10.0.0.0/']) {
    assert.equal(code(() => parseCidr(bad)), 'KILN_ERR_VALIDATION', bad);
  }
  assert.match(String((() => { try { parseCidr('10.0.0.1/8'); } catch (e) { return (e as Error).message; } })()), /did you mean 10\.0\.0\.0\/8/);
  assert.equal(code(() => normalizeEgress({ allow: Array.from({ length: 65 }, (_, i) => `10.0.${i}.0/24`) })), 'KILN_ERR_VALIDATION');
});

test('the CLI flag: names, CIDR lists, internet plus CIDRs', () => {
  assert.equal(parseEgressFlag('none'), 'none');
  assert.equal(parseEgressFlag('internet'), 'internet');
  assert.deepEqual(parseEgressFlag('10.0.0.0/8,192.0.2.1'), { allow: ['10.0.0.0/8', '192.0.2.1'] });
  assert.deepEqual(parseEgressFlag('internet,10.0.0.0/8'), { allow: ['10.0.0.0/8'], internet: true });
  assert.equal(code(() => parseEgressFlag('none,10.0.0.0/8')), 'KILN_ERR_VALIDATION');
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KilnError } from '../errors.ts';
import { sandboxLabels } from '../e2b/sandbox-service.ts';
import {
  MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, MAX_LABELS_TOTAL, matchesLabels, mergeLabels, parseLabelSelector, validateLabels, vmKind,
} from './labels.ts';

const refused = (fn: () => unknown, message: RegExp) =>
  assert.throws(fn, (e: KilnError) => e.code === 'KILN_ERR_VALIDATION' && message.test(e.message) && e.details?.field === 'labels');

test('labels: keys of letters, digits, . _ - / starting with a letter or digit; printable values', () => {
  const ok = { team: 'infra', 'app.kubernetes.io/name': 'web', A_1: '', 'x-y': 'ü ✓ "quoted" <b>' };
  assert.deepEqual(validateLabels(ok), ok);
  for (const k of ['', '.hidden', '-x', 'a b', 'a=b', 'ключ', 'a\nb']) refused(() => validateLabels({ [k]: 'v' }), /label key/);
  refused(() => validateLabels({ k: 'line\nbreak' }), /printable/);
  refused(() => validateLabels({ k: 'esc\u001b[31m' }), /printable/);
  refused(() => validateLabels({ k: 1 }), /must be a string/);
  for (const bad of [null, [], 'a=b', 3]) refused(() => validateLabels(bad), /object of strings/);
});

test('labels: bounded in count, key, value and total size (a client cannot grow kilnd\'s rows without bound)', () => {
  const many = (n: number, v = 'v') => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, v]));
  assert.equal(Object.keys(validateLabels(many(MAX_LABELS))).length, MAX_LABELS);
  refused(() => validateLabels(many(MAX_LABELS + 1)), new RegExp(`at most ${MAX_LABELS} labels`));
  validateLabels({ ['k'.repeat(MAX_LABEL_KEY)]: 'v' });
  refused(() => validateLabels({ ['k'.repeat(MAX_LABEL_KEY + 1)]: 'v' }), /label key/);
  validateLabels({ k: 'v'.repeat(MAX_LABEL_VALUE) });
  refused(() => validateLabels({ k: 'v'.repeat(MAX_LABEL_VALUE + 1) }), /at most 1024/);
  // Each value within its limit, all of them together over the total.
  const big = many(20, 'v'.repeat(MAX_LABEL_VALUE));
  assert.ok(20 * MAX_LABEL_VALUE > MAX_LABELS_TOTAL);
  refused(() => validateLabels(big), /in all/);
});

test('labels: kiln. and e2b. keys are kilnd\'s own (refused from clients, allowed for its services)', () => {
  refused(() => validateLabels({ 'kiln.kind': 'sandbox' }), /kiln's own/);
  refused(() => validateLabels({ 'e2b.sandbox': 'ifake' }), /kiln's own/);
  assert.deepEqual(validateLabels({ 'kiln.kind': 'sandbox' }, { allowReserved: true }), { 'kiln.kind': 'sandbox' });
  assert.deepEqual(validateLabels({ kilnx: 'ok', e2bx: 'ok' }), { kilnx: 'ok', e2bx: 'ok' }, 'only the dotted prefixes are reserved');
});

test('labels: a merge sets and removes keys, and is validated as a whole', () => {
  assert.deepEqual(mergeLabels({ a: '1', b: '2' }, { b: null, c: '3' }), { a: '1', c: '3' });
  const full = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`k${i}`, 'v']));
  refused(() => mergeLabels(full, { extra: 'v' }), /at most/);
});

test('labels: selectors KEY and KEY=VALUE, all of them must match', () => {
  assert.deepEqual(parseLabelSelector('e2b.sandbox'), { key: 'e2b.sandbox', value: null });
  assert.deepEqual(parseLabelSelector('e2b.meta.user=a=b'), { key: 'e2b.meta.user', value: 'a=b' });
  assert.deepEqual(parseLabelSelector('k='), { key: 'k', value: '' });
  for (const bad of ['', '=v', 'a b=c']) refused(() => parseLabelSelector(bad), /label filter/);
  const l = { team: 'infra', tier: 'web' };
  assert.equal(matchesLabels(l, []), true);
  assert.equal(matchesLabels(l, [parseLabelSelector('team')]), true);
  assert.equal(matchesLabels(l, [parseLabelSelector('team=infra'), parseLabelSelector('tier=web')]), true);
  assert.equal(matchesLabels(l, [parseLabelSelector('team=infra'), parseLabelSelector('tier=db')]), false);
  assert.equal(matchesLabels(l, [parseLabelSelector('team=')]), false);
  assert.equal(matchesLabels(undefined, [parseLabelSelector('team')]), false);
});

test('kind: the kiln.kind label, else classic or a plain VM; an unknown kind is not trusted', () => {
  assert.equal(vmKind({ labels: { 'kiln.kind': 'sandbox' }, classic: null }), 'sandbox');
  assert.equal(vmKind({ labels: {}, classic: null }), 'vm');
  assert.equal(vmKind({ labels: undefined, classic: { hostname: 'h', sshAuthorizedKeys: [], userData: null, disk: { path: '/d', sizeBytes: 1, strategy: null, cloneMs: null } } }), 'classic');
  assert.equal(vmKind({ labels: { 'kiln.kind': 'spaceship' }, classic: null }), 'vm');
});

test('a sandbox\'s labels: kind, id, template, end of life, what a timeout does, metadata under e2b.meta.', () => {
  const labels = sandboxLabels({ id: 'iabc', templateId: 'base', endAt: Date.parse('2026-12-02T20:00:00.000Z'), autoPause: true, metadata: { userId: '42', 'run.id': 'r-1' } });
  assert.deepEqual(labels, {
    'kiln.kind': 'sandbox', 'e2b.sandbox': 'iabc', 'e2b.template': 'base', 'e2b.end_at': '2026-12-02T20:00:00.000Z', 'e2b.on_timeout': 'pause',
    'e2b.meta.userId': '42', 'e2b.meta.run.id': 'r-1',
  });
  assert.deepEqual(validateLabels(labels, { allowReserved: true }), labels);
});

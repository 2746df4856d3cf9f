import assert from 'node:assert/strict';
import { test } from 'node:test';
import { e2bApiKey, apiKeyMatches } from './api-key.ts';
import { egressOf, listPage, parseMetadataQuery } from './control-plane.ts';
import { E2bError } from './errors.ts';
import type { SandboxRecord } from './sandbox-store.ts';

const sb = (id: string, startedAt: number, metadata: Record<string, string> = {}, state: SandboxRecord['state'] = 'running'): SandboxRecord => ({
  id, vmId: `vm-${id}`, templateId: 'base', metadata, envVars: {}, accessToken: 't', autoPause: false, state,
  cpuCount: 1, memoryMb: 512, startedAt, endAt: startedAt + 1000,
});

test('the metadata filter reads the SDK\'s encoding (URLSearchParams of encoded pairs)', () => {
  // What the SDK sends for {team: 'a b', 'k&': 'v=1'}: pairs encoded, then joined as a query.
  const pairs = Object.fromEntries(Object.entries({ team: 'a b', 'k&': 'v=1' }).map(([k, v]) => [encodeURIComponent(k), encodeURIComponent(v)]));
  assert.deepEqual(parseMetadataQuery(new URLSearchParams(pairs).toString()), { team: 'a b', 'k&': 'v=1' });
  assert.deepEqual(parseMetadataQuery(undefined), {});
});

test('list: metadata and state filters, pages joined by the cursor without gaps or repeats', () => {
  const all = [sb('a', 1, { t: 'x' }), sb('b', 2, { t: 'y' }), sb('c', 2, { t: 'x' }, 'paused'), sb('d', 3, { t: 'x' })];
  assert.deepEqual(listPage(all, { metadata: 't=x' }).items.map((s) => s.id), ['a', 'c', 'd']);
  assert.deepEqual(listPage(all, { metadata: 't=x', state: 'running' }).items.map((s) => s.id), ['a', 'd']);
  assert.deepEqual(listPage(all, { state: 'paused' }).items.map((s) => s.id), ['c']);
  const seen: string[] = [];
  let next: string | undefined;
  do {
    const p = listPage(all, { limit: '1', ...(next ? { nextToken: next } : {}) });
    seen.push(...p.items.map((s) => s.id));
    next = p.next ?? undefined;
  } while (next);
  assert.deepEqual(seen, ['a', 'b', 'c', 'd']);
  assert.deepEqual(listPage(all, { order: 'desc', limit: '2' }).items.map((s) => s.id), ['d', 'c']);
  assert.throws(() => listPage(all, { limit: '0' }), E2bError);
  assert.throws(() => listPage(all, { state: 'dead' }), E2bError);
  assert.throws(() => listPage(all, { nextToken: 'garbage' }), E2bError);
});

test('network settings become kiln egress policies; what kiln cannot enforce is refused', () => {
  assert.equal(egressOf({ allow_internet_access: false }), 'none');
  assert.equal(egressOf({}), undefined);
  assert.deepEqual(egressOf({ network: { allowOut: ['1.2.3.4', '10.0.0.0/8'], denyOut: ['0.0.0.0/0'] } }), { allow: ['1.2.3.4/32', '10.0.0.0/8'], internet: false });
  assert.throws(() => egressOf({ network: { allowOut: ['example.com'], denyOut: ['0.0.0.0/0'] } }), E2bError);
  assert.throws(() => egressOf({ network: { denyOut: ['8.8.8.8'] } }), E2bError);
});

test('the E2B API key: e2b_<hex> (the SDK\'s check), derived from and changing with the kiln token', () => {
  const k = e2bApiKey('token-one');
  assert.match(k, /^e2b_[0-9a-f]+$/);
  assert.equal(e2bApiKey('token-one'), k);
  assert.notEqual(e2bApiKey('token-two'), k);
  assert.equal(apiKeyMatches(k, k), true);
  assert.equal(apiKeyMatches(`${k}0`, k), false);
  assert.equal(apiKeyMatches(undefined, k), false);
  assert.equal(apiKeyMatches(undefined, null), true);
});

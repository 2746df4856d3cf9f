import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ERRORS, KilnError, asKilnError } from './errors.ts';

test('every error code is KILN_ERR_*, has an HTTP status and a summary', () => {
  for (const [code, e] of Object.entries(ERRORS)) {
    assert.match(code, /^KILN_ERR_[A-Z_]+$/);
    assert.ok(e.status >= 400 && e.status < 600, code);
    assert.ok(e.summary.length > 10, code);
  }
});

test('KilnError carries its status; unknown throwables become KILN_ERR_INTERNAL', () => {
  const e = new KilnError('KILN_ERR_VM_NOT_FOUND', 'no VM x');
  assert.equal(e.status, 404);
  assert.equal(asKilnError(e), e);
  const wrapped = asKilnError(new TypeError('bad'));
  assert.equal(wrapped.code, 'KILN_ERR_INTERNAL');
  assert.equal(wrapped.status, 500);
});

test('docs/api.md documents every error code with its status', async () => {
  const { readFile } = await import('node:fs/promises');
  const api = await readFile(new URL('../docs/api.md', import.meta.url), 'utf8');
  // Rows of the error table: | `KILN_ERR_A` · `KILN_ERR_B` | status | meaning |
  const documented = new Map<string, number>();
  for (const row of api.split('\n').filter((l) => l.startsWith('| `KILN_ERR_'))) {
    const [codes, status] = row.split('|').slice(1, 3).map((c) => c.trim()) as [string, string];
    for (const code of codes.match(/KILN_ERR_[A-Z_]+/g) ?? []) documented.set(code, Number(status));
  }
  for (const [code, e] of Object.entries(ERRORS)) assert.equal(documented.get(code), e.status, `docs/api.md lists ${code} with status ${e.status}`);
  for (const code of documented.keys()) assert.ok(code in ERRORS, `docs/api.md lists ${code}, which src/errors.ts does not define`);
});

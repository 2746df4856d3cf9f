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

test('the README or a page in docs/ documents every error code', async () => {
  const { readFile, readdir } = await import('node:fs/promises');
  const docs = new URL('../docs/', import.meta.url);
  const pages = (await readdir(docs)).filter((f) => f.endsWith('.md')).map((f) => new URL(f, docs));
  const text = (await Promise.all([new URL('../README.md', import.meta.url), ...pages].map((u) => readFile(u, 'utf8')))).join('\n');
  for (const code of Object.keys(ERRORS)) assert.ok(text.includes(code), `README or docs/*.md lists ${code}`);
});

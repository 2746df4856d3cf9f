// Asserts that an SDK call fails with one of kiln's API errors (status and stable code).
import assert from 'node:assert/strict';
import { KilnApiError } from '../../src/sdk/client.ts';

export async function expectApiError(p: Promise<unknown>, status: number, code: string): Promise<KilnApiError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof KilnApiError, `expected an API error, got ${e}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.status, status, e.message);
    return e;
  }
  assert.fail(`expected ${code}`);
}

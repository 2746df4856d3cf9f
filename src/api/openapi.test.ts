import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { test } from 'node:test';
import { OPENAPI_FILE, openapiDocument } from '../../scripts/write-openapi.ts';

test('docs/openapi.json matches the route schemas (run `npm run openapi` after changing them)', async () => {
  const committed = JSON.parse(await fs.readFile(OPENAPI_FILE, 'utf8'));
  assert.deepEqual(committed, JSON.parse(JSON.stringify(await openapiDocument())));
});

test('every error response documents the stable error shape', async () => {
  const doc = (await openapiDocument()) as { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: { required?: string[] } }> }> }>> };
  const create = doc.paths['/v1/vms']!.post!.responses['400']!.content!['application/json']!.schema;
  assert.deepEqual([...(create.required ?? [])].sort(), ['code', 'error', 'message', 'statusCode']);
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { image } from '../store/conformance.ts';
import type { ImageRecord } from '../store/store.ts';
import { ImageIds } from './image-ids.ts';

test('image ids: one store read per name within the TTL, asked again after it; an unknown name is undefined', async () => {
  const asked: string[] = [];
  let current: ImageRecord | null = image;
  let now = 1_000;
  const ids = new ImageIds({ getImage: async (ref) => (asked.push(ref), current && (ref === current.id || ref === current.name) ? current : null) }, 5_000, () => now);
  assert.equal(await ids.resolve('default'), 'img-1');
  assert.equal(await ids.resolve('default'), 'img-1');
  assert.equal(await ids.resolve('img-1'), 'img-1');
  assert.deepEqual(asked, ['default', 'img-1'], 'the second create of the same image asked nothing');
  assert.equal(await ids.resolve('nope'), undefined);
  current = { ...image, id: 'img-2' };
  now += 4_999;
  assert.equal(await ids.resolve('default'), 'img-1', 'within the TTL: remembered');
  now += 1;
  assert.equal(await ids.resolve('default'), 'img-2', 'after it: read again');
  assert.deepEqual(asked, ['default', 'img-1', 'nope', 'default']);
});

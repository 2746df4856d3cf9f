import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import type { KilnError } from '../../errors.ts';
import { EventBus } from '../../events/event-bus.ts';
import { image } from '../../store/conformance.ts';
import { SqliteStore } from '../../store/sqlite-store.ts';
import { ImageService } from '../image-service.ts';
import { RecipeBuilder, recipeKey, type DebianRecipe } from './debian-recipe.ts';

const base: DebianRecipe = { name: 'kiln-runtime-node', packages: ['nodejs', 'ca-certificates'] };
const mirror = 'http://deb.debian.org/debian';

test('recipe key: package order does not matter, content does', () => {
  assert.equal(recipeKey(base, mirror), recipeKey({ ...base, packages: ['ca-certificates', 'nodejs'] }, mirror));
  assert.notEqual(recipeKey(base, mirror), recipeKey({ ...base, packages: ['nodejs'] }, mirror));
  assert.notEqual(recipeKey(base, mirror), recipeKey({ ...base, inputs: ['shim v2'] }, mirror), 'a changed shim rebuilds');
  assert.notEqual(recipeKey(base, mirror), recipeKey({ ...base, suite: 'trixie' }, mirror));
  assert.notEqual(recipeKey(base, mirror), recipeKey({ ...base, format: 'ext4' }, mirror));
  assert.notEqual(recipeKey(base, mirror), recipeKey(base, 'http://mirror.example/debian'));
});

test("a node that knows a recipe builds its own copy of the recipe's image (from the host's cache) when no peer holds one; a pulled image of that name is not", async () => {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-recipe-'));
  const store = new SqliteStore(path.join(tmp, 'kiln.db'));
  try {
    const bus = new EventBus(store, pino({ level: 'silent' }));
    const puller = async () => {
      throw new Error('no registry in this test');
    };
    // Node b (no peers: no cluster token) and the host's recipe cache, as a build left it.
    const images = new ImageService(store, bus, { stateDir: path.join(tmp, 'b'), puller, nodeId: 'node-b' });
    const recipes = new RecipeBuilder({ images, assetsDir: tmp, mirror, log: pino({ level: 'silent' }) });
    const key = recipeKey(base, mirror);
    const cached = randomBytes(1 << 16);
    await fs.mkdir(path.join(tmp, 'recipes'));
    await fs.writeFile(path.join(tmp, 'recipes', `${key}.squashfs`), cached);
    await fs.writeFile(path.join(tmp, 'recipes', `${key}.json`), JSON.stringify({ builder: 'mksquashfs' }));
    // The catalogue row another node made (its copy is its own: none here).
    const made = { ...image, id: 'img-recipe', name: recipes.imageName(base), digest: 'sha256:other-node' };
    await store.insertImage(made);
    await assert.rejects(images.ensureLocal(made), (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED', 'an unknown recipe: nothing to build');
    recipes.know([base]);
    const got = await images.ensureLocal(made);
    assert.ok(got.path.startsWith(path.join(tmp, 'b') + path.sep), got.path);
    assert.deepEqual(await fs.readFile(got.path), cached);
    // An image of that name that was pulled is the registry's, not the recipe's: never built here.
    await images.delete(made.id);
    const pulled = { ...made, id: 'img-pulled', source: 'reg.example/x:1' };
    await store.insertImage(pulled);
    await assert.rejects(images.ensureLocal(pulled), (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED');
  } finally {
    await store.close();
    await fs.rm(tmp, { recursive: true, force: true });
  }
});

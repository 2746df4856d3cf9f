import assert from 'node:assert/strict';
import { test } from 'node:test';
import { recipeKey, type DebianRecipe } from './debian-recipe.ts';

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

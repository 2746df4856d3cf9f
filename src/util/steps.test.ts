import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import { CleanupStack, StepList, runSteps, type Step } from './steps.ts';

const s = (name: string, log: string[] = []): Step<unknown> => ({ name, run: async () => void log.push(name) });

test('edits place steps relative to named anchors', () => {
  const list = new StepList([s('a'), s('b'), s('c')]);
  list.insertAfter('a', s('a2')).insertBefore('c', s('b2')).append(s('d')).remove('b').replace('d', s('d2'));
  assert.deepEqual(list.names, ['a', 'a2', 'b2', 'c', 'd2']);
});

test('an edit whose anchor is missing fails loudly, naming the steps there are', () => {
  const list = new StepList([s('fc.spawn')]);
  for (const edit of [() => list.insertAfter('fc.nope', s('x')), () => list.remove('fc.nope'), () => list.replace('fc.nope', s('x'))]) {
    assert.throws(edit, (e) => isKilnError(e) && /fc\.nope/.test(e.message) && /fc\.spawn/.test(e.message));
  }
  assert.throws(() => list.append(s('fc.spawn')), /already in the list/);
  assert.throws(() => new StepList([s('x'), s('x')]), /appears twice/);
});

test('runSteps runs in order, reports each step, stops at the first failure', async () => {
  const log: string[] = [];
  const events: string[] = [];
  const list = new StepList<unknown>([s('one', log), { name: 'two', run: async () => Promise.reject(new Error('boom')) }, s('three', log)]);
  await assert.rejects(runSteps(list, {}, { onStep: (e) => events.push(`${e.step}:${e.error ? 'fail' : 'ok'}`) }), /boom/);
  assert.deepEqual(log, ['one']);
  assert.deepEqual(events, ['one:ok', 'two:fail']);
});

test('runSteps refuses to start the next step once aborted', async () => {
  const ac = new AbortController();
  const log: string[] = [];
  const list = new StepList<unknown>([{ name: 'one', run: async () => ac.abort('deadline') }, s('two', log)]);
  await assert.rejects(runSteps(list, {}, { signal: ac.signal }), (e) => isKilnError(e) && /before two/.test(e.message));
  assert.deepEqual(log, []);
});

test('cleanup runs once, in reverse, and reports every failure', async () => {
  const order: string[] = [];
  const c = new CleanupStack();
  c.push('first', () => void order.push('first'));
  c.push('second', () => {
    order.push('second');
    throw new Error('second failed');
  });
  c.push('third', async () => {
    order.push('third');
    throw new Error('third failed');
  });
  const failures = await c.run();
  assert.deepEqual(order, ['third', 'second', 'first']);
  assert.deepEqual(
    failures.map((f) => f.name),
    ['third', 'second'],
  );
  assert.deepEqual(await c.run(), []);
  assert.deepEqual(order, ['third', 'second', 'first']);
  assert.throws(() => c.push('late', () => {}), /already ran/);
});

test('concurrent neighbours run as one batch; the batch reports its first failure after all settled', async () => {
  const log: string[] = [];
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const list = new StepList<null>([
    { name: 'a', run: async () => void log.push('a') },
    { name: 'b', concurrent: true, run: async () => { log.push('b:start'); await gate; log.push('b:end'); } },
    { name: 'c', concurrent: true, run: async () => { log.push('c'); open(); throw new Error('c broke'); } },
    { name: 'd', run: async () => void log.push('d') },
  ]);
  await assert.rejects(runSteps(list, null), /c broke/);
  // b and c started together, b finished before the failure was reported, d never ran.
  assert.deepEqual(log, ['a', 'b:start', 'c', 'b:end']);
});

test('around wraps every step by name', async () => {
  const seen: string[] = [];
  const list = new StepList<null>([{ name: 'x', run: async () => {} }, { name: 'y', run: async () => {} }]);
  await runSteps(list, null, { around: async (name, run) => { seen.push(`<${name}`); await run(); seen.push(`${name}>`); } });
  assert.deepEqual(seen, ['<x', 'x>', '<y', 'y>']);
});

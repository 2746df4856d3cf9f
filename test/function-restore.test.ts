// Functions on restored clones (issue #8 acceptance 2): the first instance of a runtime and
// size boots while kilnd builds that runtime's template in the background; later cold starts
// are clones restored from it. A template with running clones cannot be deleted.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { expectApiError } from './helpers/api-errors.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

let d: TestDaemon;

before(async () => {
  if (skip) return;
  // No warm pool: every cold start below is an instance made for that call.
  d = await startKilnd({ env: { KILN_FN_POOL_SIZE: '0' } });
});
after(() => d?.dispose());

const code = (k: number) => `async function handler(event) { return { doubled: event.n * 2, k: ${k}, pid: process.pid }; }`;

test('a function cold start uses a restored clone of the runtime template; the template is kept while clones run', { skip }, async () => {
  await d.client.createFunction({ name: 'first', runtime: 'node', code: code(1), handler: 'handler', memory_mb: 128 });
  const first = await d.client.invoke<{ doubled: number; k: number }>('first', { n: 21 });
  assert.deepEqual({ doubled: first.result.doubled, k: first.result.k }, { doubled: 42, k: 1 });
  assert.equal(first.source, 'boot', 'no template yet: the first instance boots');

  // The template (runtime image booted once, shim listening, snapshotted at agent-ready) is
  // built beside that first call.
  const tpl = await until('the node runtime template', async () => (await d.client.listTemplates()).find((t) => t.state === 'ready'), 240_000);

  await d.client.createFunction({ name: 'second', runtime: 'node', code: code(2), handler: 'handler', memory_mb: 128 });
  const second = await d.client.invoke<{ doubled: number; k: number }>('second', { n: 50 });
  assert.deepEqual({ doubled: second.result.doubled, k: second.result.k }, { doubled: 100, k: 2 });
  assert.equal(second.source, 'restore');
  const [inv] = await d.client.invocations('second');
  assert.equal(inv!.instance_start, 'restore');
  assert.ok(inv!.timeline.some((p) => p.phase === 'instance.restore'), JSON.stringify(inv!.timeline));
  const warm = await d.client.invoke<{ doubled: number }>('second', { n: 1 });
  assert.equal(warm.result.doubled, 2);
  assert.equal(warm.cold, false);

  // The clone is a VM of its own: its own address, distinct from the booted instance's.
  const vms = await d.client.listVms();
  const bootedId = (await d.client.invocations('first'))[0]!.instance;
  const clone = vms.find((v) => v.id === inv!.instance)!;
  const booted = vms.find((v) => v.id === bootedId)!;
  assert.equal(clone.state, 'ready');
  assert.ok(clone.ip && booted.ip && clone.ip !== booted.ip, `${clone.ip} vs ${booted.ip}`);

  await expectApiError(d.client.deleteTemplate(tpl.id), 409, 'KILN_ERR_SNAPSHOT_IN_USE');
  assert.ok((await d.client.listTemplates()).some((t) => t.id === tpl.id), 'a refused delete keeps the template');

  await d.client.deleteFunction('second');
  await until('the clone to be deleted', async () => !(await d.client.listVms()).some((v) => v.id === clone.id), 60_000);
  await d.client.deleteTemplate(tpl.id);
  assert.ok(!(await d.client.listTemplates()).some((t) => t.id === tpl.id));
  await d.client.deleteFunction('first');
});

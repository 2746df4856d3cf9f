// Real microVMs (KILN_BACKEND, default auto: QEMU with TCG on hosts where KVM cannot boot a guest) driven through the SDK
// against a real kilnd process. One daemon for the whole file; VMs are shared where safe.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { vmmPids, startKilnd, waitForLog, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { BODY_LIMIT } from '../src/api/server.ts';
import { CreateVmBody } from '../src/api/schemas.ts';
import { HOST_CPUS, HOST_MEMORY_MIB } from '../src/config.ts';

let d: TestDaemon;

before(async () => {
  if (skip) return;
  d = await startKilnd();
});

after(() => d?.dispose());

describe('VM lifecycle', { skip }, () => {
  test('create → ready → logs → stop → start → delete, reflected by ls', async () => {
    const created = await d.client.createVm({ name: 'life' });
    assert.equal(created.state, 'creating');
    assert.ok((await d.client.listVms()).some((v) => v.id === created.id));

    const ready = await waitForState(d.client, created.id, ['ready']);
    assert.equal(ready.state, 'ready');
    assert.equal((await d.client.listVms()).find((v) => v.id === created.id)?.state, 'ready');
    const phases = ready.timeline.map((p) => p.phase);
    for (const p of ['api.accept', 'rootfs.prepare', 'vmm.spawn', 'guest.kernel', 'guest.init']) assert.ok(phases.includes(p), `timeline has ${p}: ${phases}`);
    assert.ok(ready.timeline.every((p) => p.duration_ms !== null && p.duration_ms >= 0));
    const health = await d.client.health();
    assert.equal(ready.accelerator, health.accelerator);

    const logs = await waitForLog(d.client, created.id, /kiln default image on Linux .* hostname life/);
    assert.doesNotMatch(logs, /@kiln:/, 'control markers are not part of the logs');

    const stopped = await d.client.stopVm(created.id);
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.pid, null);
    assert.equal((await d.client.listVms()).find((v) => v.id === created.id)?.state, 'stopped');
    assert.deepEqual(await vmmPids(path.join(d.stateDir, 'vms', created.id)), []);

    await d.client.startVm(created.id);
    const again = await waitForState(d.client, created.id, ['ready']);
    assert.equal(again.boot_count, 2);

    await d.client.deleteVm(created.id);
    await expectApiError(d.client.getVm(created.id), 404, 'KILN_ERR_VM_NOT_FOUND');
    assert.ok(!(await d.client.listVms()).some((v) => v.id === created.id));
    await assert.rejects(fs.access(path.join(d.stateDir, 'vms', created.id)));
  });

  test('pause/resume keeps guest memory state', async () => {
    const vm = await d.client.createVm(
      { name: 'counter', cmd: ['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.3; done'] },
      { wait: true },
    );
    await waitForLog(d.client, vm.id, /tick 3\b/);
    await d.client.pauseVm(vm.id);
    assert.equal((await d.client.getVm(vm.id)).state, 'paused');
    const atPause = await d.client.logs(vm.id);
    const last = Math.max(...[...atPause.matchAll(/tick (\d+)/g)].map((m) => Number(m[1])));
    // A paused guest produces nothing: give it time in which it would have ticked several times.
    await new Promise((r) => setTimeout(r, 1500));
    const duringPause = await d.client.logs(vm.id);
    assert.ok(!duringPause.includes(`tick ${last + 2}`), 'no output while paused');
    await d.client.resumeVm(vm.id);
    assert.equal((await d.client.getVm(vm.id)).state, 'ready');
    const resumed = await waitForLog(d.client, vm.id, new RegExp(`tick ${last + 2}\\b`));
    // The counter continued from memory; it did not restart.
    assert.equal([...resumed.matchAll(/tick 1\b/g)].length, 1);
    await d.client.deleteVm(vm.id);
  });

  test('a workload that exits stops the VM and records its exit code', async () => {
    const vm = await d.client.createVm({ name: 'exit3', cmd: ['/bin/sh', '-c', 'echo bye; exit 3'] });
    const done = await waitForState(d.client, vm.id, ['stopped', 'failed']);
    assert.equal(done.state, 'stopped');
    assert.equal(done.exit_code, 3);
    assert.match(await d.client.logs(vm.id), /bye/);
    await d.client.deleteVm(vm.id);
  });

  test('a command that cannot run reports exit code 127 and its reason in the logs', async () => {
    const vm = await d.client.createVm({ name: 'noexec', cmd: ['/no/such/binary'] });
    const done = await waitForState(d.client, vm.id, ['stopped', 'failed']);
    assert.equal(done.exit_code, 127);
    assert.match(await d.client.logs(vm.id), /exec \/no\/such\/binary/);
    await d.client.deleteVm(vm.id);
  });

  test('5 VMs created concurrently all reach ready; deleting leaves nothing behind', async () => {
    const vms = await Promise.all([1, 2, 3, 4, 5].map((i) => d.client.createVm({ name: `par-${i}`, memory_mib: 192 })));
    const ready = await Promise.all(vms.map((v) => waitForState(d.client, v.id, ['ready', 'failed'], 300_000)));
    assert.deepEqual(ready.map((v) => v.state), ['ready', 'ready', 'ready', 'ready', 'ready'], JSON.stringify(ready.map((v) => v.state_reason)));
    const pids = ready.map((v) => v.pid!);
    await Promise.all(vms.map((v) => d.client.deleteVm(v.id)));
    for (const v of vms) await assert.rejects(fs.access(path.join(d.stateDir, 'vms', v.id)), `runtime dir of ${v.id} removed`);
    // Only these VMs' dirs: another test's leftover must not fail this one.
    for (const v of vms) assert.deepEqual(await vmmPids(path.join(d.stateDir, 'vms', v.id)), [], `no VMM left for ${v.id}`);
    for (const pid of pids) {
      const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
      assert.ok(stat === null || / Z /.test(stat), `pid ${pid} gone`);
    }
  });
});

/**
 * One more than this host has: kilnd refuses it against the host (vm-manager.ts, 422). On a
 * host that has the schema's maximum or more, the value is past the schema instead (400).
 */
function aboveHost(host: number, schemaMax: number): [number, number, string] {
  return host + 1 <= schemaMax ? [host + 1, 422, 'KILN_ERR_RESOURCE_LIMIT'] : [host + 1, 400, 'KILN_ERR_VALIDATION'];
}

function schemaMaximum(property: unknown): number {
  const max = (property as { maximum?: unknown }).maximum;
  assert.equal(typeof max, 'number', 'the schema sets a maximum');
  return max as number;
}

describe('API input validation (nothing is created)', { skip }, () => {
  const [cpus, cpusStatus, cpusCode] = aboveHost(HOST_CPUS, schemaMaximum(CreateVmBody.properties.vcpus));
  const [mib, mibStatus, mibCode] = aboveHost(HOST_MEMORY_MIB, schemaMaximum(CreateVmBody.properties.memory_mib));
  const bad: [string, unknown, number, string][] = [
    ['unknown image', { image: 'no-such-image' }, 404, 'KILN_ERR_IMAGE_NOT_FOUND'],
    ['vcpus 0', { vcpus: 0 }, 400, 'KILN_ERR_VALIDATION'],
    ['vcpus 1000', { vcpus: 1000 }, 400, 'KILN_ERR_VALIDATION'],
    [`vcpus above host CPUs (${cpus})`, { vcpus: cpus }, cpusStatus, cpusCode],
    ['memory below minimum', { memory_mib: 16 }, 400, 'KILN_ERR_VALIDATION'],
    [`memory above host memory (${mib} MiB)`, { memory_mib: mib }, mibStatus, mibCode],
    ['vcpus as a string', { vcpus: '1' }, 400, 'KILN_ERR_VALIDATION'],
    ['unknown field', { name: 'x', color: 'blue' }, 400, 'KILN_ERR_VALIDATION'],
    ['bad name', { name: 'Bad Name!' }, 400, 'KILN_ERR_VALIDATION'],
    ['kernel arg with a space', { kernel_args: ['a b'] }, 400, 'KILN_ERR_VALIDATION'],
    ['empty cmd', { cmd: [] }, 400, 'KILN_ERR_VALIDATION'],
  ];
  for (const [what, body, status, code] of bad) {
    test(what, async () => {
      const before = (await d.client.listVms()).length;
      await expectApiError(d.client.createVm(body as never), status, code);
      assert.equal((await d.client.listVms()).length, before);
    });
  }

  async function raw(body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
    const res = await fetch(`${d.url}/v1/vms`, { method: 'POST', headers: { ...headers, ...d.authHeaders }, body });
    return { status: res.status, body: (await res.json()) as { code: string; message: string; statusCode: number; error: string } };
  }

  test('malformed JSON', async () => {
    const r = await raw('{"name": ');
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'KILN_ERR_INVALID_JSON');
    assert.equal(r.body.statusCode, 400);
    assert.equal(typeof r.body.error, 'string');
  });

  test('oversized body: the 413 reaches a client still sending, every time', async () => {
    // kilnd reads and drops the rest of the body before its answer can race the upload
    // (src/api/oversized-body.ts); each try is a fresh race.
    const body = JSON.stringify({ name: 'big', env: { A: 'x'.repeat(2 * BODY_LIMIT) } });
    for (let i = 0; i < 20; i++) {
      const r = await raw(body);
      assert.equal(r.status, 413, `try ${i}`);
      assert.equal(r.body.code, 'KILN_ERR_BODY_TOO_LARGE', `try ${i}`);
    }
  });

  test('wrong content type', async () => {
    const r = await raw('name=x', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(r.status, 415);
    assert.equal(r.body.code, 'KILN_ERR_UNSUPPORTED_MEDIA_TYPE');
  });

  test('unknown id on every VM route', async () => {
    await expectApiError(d.client.getVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.stopVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.startVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.pauseVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.resumeVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.deleteVm('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await expectApiError(d.client.logs('vm-nope'), 404, 'KILN_ERR_VM_NOT_FOUND');
  });

  test('unknown route and unknown query parameter', async () => {
    const res = await fetch(`${d.url}/v1/nothing`, { headers: d.authHeaders });
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { code: string }).code, 'KILN_ERR_NOT_FOUND');
    await expectApiError(d.client.request('GET', '/v1/vms/x/logs', { query: { follow: 'maybe' } }), 400, 'KILN_ERR_VALIDATION');
  });

  test('conflicting names', async () => {
    const vm = await d.client.createVm({ name: 'dup', cmd: ['/bin/sh', '-c', 'exit 0'] });
    await expectApiError(d.client.createVm({ name: 'dup' }), 409, 'KILN_ERR_NAME_CONFLICT');
    await waitForState(d.client, vm.id, ['stopped', 'failed']);
    await d.client.deleteVm(vm.id);
  });
});

describe('daemon surfaces', { skip }, () => {
  test('/healthz reports backend and accelerator', async () => {
    const h = await d.client.health();
    assert.equal(h.status, 'ok');
    const want = process.env.KILN_BACKEND;
    if (want === 'qemu' || want === 'firecracker') assert.equal(h.backend, want);
    else assert.match(h.backend_reason, /^auto: /, 'auto says what it found');
    if (h.backend === 'firecracker') assert.equal(h.accelerator, 'kvm');
    assert.ok(['kvm', 'tcg'].includes(h.accelerator));
    assert.ok(h.accelerator_reason.length > 0);
  });

  test('/openapi.json documents the routes with the validation schemas', async () => {
    const doc = (await (await fetch(`${d.url}/openapi.json`, { headers: d.authHeaders })).json()) as { openapi: string; paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { properties: Record<string, { minimum?: number }> } }> } }>> };
    assert.match(doc.openapi, /^3\./);
    for (const p of ['/v1/vms', '/v1/vms/{id}', '/v1/vms/{id}/stop', '/v1/vms/{id}/logs', '/v1/images', '/v1/events']) assert.ok(doc.paths[p], `documents ${p}`);
    const props = doc.paths['/v1/vms']!.post!.requestBody!.content['application/json']!.schema.properties;
    assert.equal(props.vcpus!.minimum, 1);
  });

  test('/metrics exposes provisioning histograms and VM gauges', async () => {
    const text = await (await fetch(`${d.url}/metrics`, { headers: d.authHeaders })).text();
    assert.match(text, /kiln_provision_phase_seconds_bucket\{.*phase="guest.kernel"/);
    assert.match(text, /kiln_vm_transitions_total\{to="ready"\}/);
    assert.match(text, /# TYPE kiln_vms gauge/);
  });

  test('/v1/events streams state changes and replays with ?since', async () => {
    const ac = new AbortController();
    const seen: string[] = [];
    const stream = (async () => {
      for await (const e of d.client.events({ signal: ac.signal })) {
        if (e.type === 'vm.state') seen.push(String(e.to));
        if (e.type === 'vm.deleted') break;
      }
    })();
    const vm = await d.client.createVm({ name: 'evt', cmd: ['/bin/sh', '-c', 'exit 0'] });
    await waitForState(d.client, vm.id, ['stopped']);
    await d.client.deleteVm(vm.id);
    await stream;
    ac.abort();
    assert.deepEqual(seen, ['booting', 'ready', 'stopped']);
    const replay: string[] = [];
    const ac2 = new AbortController();
    for await (const e of d.client.events({ since: 0, signal: ac2.signal })) {
      if (e.vm === vm.id) replay.push(e.type);
      if (e.type === 'vm.deleted' && e.vm === vm.id) break;
    }
    ac2.abort();
    assert.deepEqual(replay.filter((t) => t === 'vm.created' || t === 'vm.state' || t === 'vm.deleted'), ['vm.created', 'vm.state', 'vm.state', 'vm.state', 'vm.deleted']);
  });
});

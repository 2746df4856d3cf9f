// The dashboard's view functions are pure (strings in, strings out): tested here in Node.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { html, raw } from '../lib/html.js';
import { errorBox, waterfall } from './common.js';
import { fnRow, invocationPhases, invocationResult } from './functions.js';
import { imageRow, PullProgress } from './images.js';
import { eventRow } from './events.js';
import { timelinePhases, vmHeader, vmRow, vmStats } from './vms.js';
import { containerRow } from './containers.js';

const EVIL = '<img src=x onerror="alert(1)">&\'`';

const vm = (over: Record<string, unknown> = {}) => ({
  id: 'vm-1', name: 'web', state: 'ready', state_reason: null, ip: '10.0.0.2', image: { id: 'img-1', name: 'default' }, vcpus: 1, memory_mib: 128,
  ports: [{ host: 8080, guest: 80, proto: 'tcp' }], created_at: new Date().toISOString(), backend: 'qemu', accelerator: 'tcg', exit_code: null,
  timeline: [], ...over,
});

test('html: interpolated values are escaped; nested html and raw are not', () => {
  const out = String(html`<p title="${EVIL}">${EVIL}${html`<b>${'x<y'}</b>`}${raw('<i>ok</i>')}</p>`);
  assert.equal(out, '<p title="&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;&#96;">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;&#96;<b>x&lt;y</b><i>ok</i></p>');
  assert.equal(String(html`${null}${undefined}${false}${0}${[html`<a>`, '<b>']}`), '0<a>&lt;b&gt;');
});

test('a VM whose name and reason hold HTML stays text in its row and header', () => {
  const v = vm({ name: EVIL, state_reason: '<script>x</script>', image: { id: 'i', name: '<b>img</b>' } });
  for (const out of [String(vmRow(v)), String(vmHeader(v))]) {
    assert.doesNotMatch(out, /<img|<script|<b>img/);
    assert.match(out, /&lt;img src=x onerror=&quot;alert\(1\)&quot;&gt;/);
  }
  assert.match(String(vmHeader(v)), /&lt;script&gt;x&lt;\/script&gt;/);
});

test('vm row: state badge, ports, size; header offers the ops of its state', () => {
  const row = String(vmRow(vm()));
  assert.match(row, /<td class="state"><span class="badge state-ready">ready<\/span><\/td>/);
  assert.match(row, /8080→80/);
  assert.match(row, /1 × 128 MiB/);
  const ops = (s: string) => [...String(vmHeader(vm({ state: s }))).matchAll(/data-op="(\w+)"/g)].map((m) => m[1]);
  assert.deepEqual(ops('ready'), ['stop', 'pause', 'snapshot', 'delete']);
  assert.deepEqual(ops('stopped'), ['start', 'delete']);
  assert.deepEqual(ops('paused'), ['resume', 'snapshot', 'delete']);
});

test('vm row and header: the kind, and labels as escaped chips without kiln.kind', () => {
  const v = vm({ kind: 'sandbox', labels: { 'kiln.kind': 'sandbox', 'e2b.sandbox': 'iabc', 'e2b.meta.note': '<b>x</b>' } });
  for (const out of [String(vmRow(v)), String(vmHeader(v))]) {
    assert.match(out, /sandbox/);
    assert.match(out, /e2b\.sandbox=iabc/);
    assert.match(out, /e2b\.meta\.note=&lt;b&gt;x&lt;\/b&gt;/);
    assert.doesNotMatch(out, /kiln\.kind=/);
  }
  assert.match(String(vmRow(v)), /<span class="kind kind-sandbox">sandbox<\/span>/);
  assert.doesNotMatch(String(vmHeader(vm({ kind: 'vm', labels: {} }))), /vm-labels/, 'no labels line for a VM without labels');
});

test('timeline → waterfall: bars placed at their start, sized by duration; a running phase shown as such', () => {
  const t0 = Date.parse('2026-01-01T00:00:00.000Z');
  const at = (ms: number) => new Date(t0 + ms).toISOString();
  const phases = timelinePhases([
    { phase: 'vmm.spawn', started_at: at(0), ended_at: at(100), duration_ms: 100 },
    { phase: 'guest.boot', started_at: at(100), ended_at: at(400), duration_ms: 300 },
    { phase: 'guest.ready', started_at: at(400), ended_at: null, duration_ms: null },
  ]);
  assert.deepEqual(phases.map((p: { start_ms: number }) => p.start_ms), [0, 100, 400]);
  const out = String(waterfall(phases));
  assert.match(out, /margin-left:0\.00%;width:25\.00%/);
  assert.match(out, /margin-left:25\.00%;width:75\.00%/);
  assert.match(out, /wf-row running/);
  assert.match(out, /total<\/span><span class="wf-track"><\/span><span class="wf-ms">400 ms/);
  assert.match(String(waterfall([])), /no timeline/);
});

test('invocation: phases laid end to end; result JSON escaped; status and cold start shown', () => {
  assert.deepEqual(invocationPhases([{ phase: 'queue', ms: 1 }, { phase: 'invoke', ms: 4 }]), [
    { phase: 'queue', start_ms: 0, duration_ms: 1 }, { phase: 'invoke', start_ms: 1, duration_ms: 4 },
  ]);
  // How the instance came up lies inside getting it (a pooled one started before the call).
  assert.deepEqual(invocationPhases([
    { phase: 'instance.pool', ms: 100 }, { phase: 'instance.start.boot', ms: 300 }, { phase: 'code.load', ms: 10 }, { phase: 'invoke', ms: 5 },
  ]).map((p: { start_ms: number; duration_ms: number }) => [p.start_ms, p.duration_ms]), [[0, 100], [0, 100], [100, 10], [110, 5]]);
  assert.match(String(waterfall(invocationPhases([{ phase: 'instance.pool', ms: 100 }, { phase: 'instance.start.boot', ms: 21800 }]))), /instance\.start\.boot<\/span>.*21\.8 s/s);
  assert.deepEqual(invocationPhases([{ phase: 'instance.boot', ms: 300 }, { phase: 'instance.start.boot', ms: 300 }])[1], { phase: 'instance.start.boot', start_ms: 0, duration_ms: 300, label_ms: 300 });
  const out = String(invocationResult({
    result: { hello: '<b>world</b>' },
    invocation: { status: 'ok', duration_ms: 12.5, guest_ms: 1.5, cold: true, source: 'pool', instance_start: 'boot', timeline: [{ phase: 'invoke', ms: 12.5 }], logs: '<i>log</i>' },
  }));
  assert.match(out, /&quot;hello&quot;: &quot;&lt;b&gt;world&lt;\/b&gt;&quot;/);
  assert.match(out, /state-ok/);
  assert.match(out, /cold: pool, boot/);
  assert.match(out, /&lt;i&gt;log&lt;\/i&gt;/);
});

test('API errors show code, status and message, escaped', () => {
  const out = String(errorBox({ code: 'KILN_ERR_VALIDATION', status: 400, message: 'name must match <pattern>' }));
  assert.equal(out, '<div class="api-error" role="alert"><code>KILN_ERR_VALIDATION</code> <span class="muted">HTTP 400</span> name must match &lt;pattern&gt;</div>');
});

test('other rows escape what the API returns', () => {
  const f = { name: EVIL, runtime: 'node', version: 1, state: 'ready', instances: [], queued: 0, memory_mb: 256, updated_at: null };
  assert.doesNotMatch(String(fnRow(f)), /<img/);
  assert.doesNotMatch(String(containerRow({ id: 'c', name: EVIL, state: 'running', image: EVIL, ip: null, exit_code: null, restart_count: 0, created_at: null })), /<img/);
  assert.doesNotMatch(String(eventRow({ seq: 1, ts: '2026-01-01T00:00:00.000Z', type: 'vm.created', vm: 'vm-1', name: EVIL })), /<img/);
  assert.match(String(vmStats({ guest_cpu_percent: 50, vcpus: 2, memory_usage_bytes: 64 * 1024 ** 2, memory_limit_bytes: 128 * 1024 ** 2 })), /value="25\.0".*50\.0% of 2 vCPU.*value="50\.0".*64\.0 MiB \/ 128\.0 MiB/s);
});

test('pull progress: bytes summed over layers from image.progress events, cleared when the pull ends', () => {
  const p = new PullProgress();
  p.add({ type: 'image.progress', id: 'img-1', phase: 'download', layer: 'sha256:a', bytes: 50, total: 100 });
  p.add({ type: 'image.progress', id: 'img-1', phase: 'download', layer: 'sha256:b', bytes: 0, total: 300 });
  p.add({ type: 'image.progress', id: 'img-1', phase: 'download', layer: 'sha256:a', bytes: 100, total: 100 });
  assert.deepEqual(p.get('img-1'), { phase: 'download', bytes: 100, total: 400 });
  const row = String(imageRow({ id: 'img-1', name: 'r/app:1', state: 'pulling', format: 'squashfs', size_bytes: 0, source: 'r/app:1', created_at: null }, p.get('img-1')));
  assert.match(row, /<progress max="100" value="25\.0"><\/progress> download 100 B \/ 400 B/);
  p.add({ type: 'image.created', id: 'img-1' });
  assert.equal(p.get('img-1'), null);
});

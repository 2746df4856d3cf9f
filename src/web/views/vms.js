// Machines: list rows, the detail panel's parts, the create form (pure templates).
import { html } from '../lib/html.js';
import { ago, bytes } from '../lib/format.js';
import { stateBadge, waterfall } from './common.js';

export const VM_OPS = /** @type {const} */ ({
  ready: ['stop', 'pause', 'snapshot', 'delete'],
  paused: ['resume', 'snapshot', 'delete'],
  stopped: ['start', 'delete'],
  exited: ['start', 'delete'],
  failed: ['start', 'delete'],
  booting: ['stop', 'delete'],
  creating: ['delete'],
  stopping: ['delete'],
});
/** Ops that take something away: asked to confirm first. */
export const CONFIRM_OPS = new Set(['stop', 'delete', 'pause']);

/** A VM's labels as `key=value` chips, without `kiln.kind` (the kind says it). @param {Record<string, string>|undefined} labels */
export function labelChips(labels) {
  const shown = Object.entries(labels ?? {}).filter(([k]) => k !== 'kiln.kind');
  return shown.length ? html`<span class="labels">${shown.map(([k, v]) => html`<span class="label" title="${k}=${v}">${k}=${v.length > 48 ? `${v.slice(0, 48)}…` : v}</span>`)}</span>` : '';
}

/** @param {any} v */
export function vmRow(v) {
  return html`<tr class="row" data-id="${v.id}">
    <td class="name">${v.name}</td><td><span class="kind kind-${v.kind ?? 'vm'}">${v.kind ?? ''}</span></td><td class="state">${stateBadge(v.state)}</td><td>${v.ip ?? ''}</td>
    <td>${v.image?.name ?? v.image?.id ?? ''}</td><td>${v.vcpus ? `${v.vcpus} × ${v.memory_mib} MiB` : ''}</td>
    <td>${v.ports?.map((p) => `${p.host}→${p.guest}${p.proto === 'udp' ? '/udp' : ''}`).join(' ') ?? ''}</td>
    <td class="muted">${ago(v.created_at)}</td><td>${labelChips(v.labels)}</td></tr>`;
}

export function vmTable() {
  return html`<table class="list"><thead><tr><th>name</th><th>kind</th><th>state</th><th>ip</th><th>image</th><th>size</th><th>ports</th><th>created</th><th>labels</th></tr></thead><tbody id="vm-rows"></tbody></table>`;
}

/** The API's timeline (ISO start/end per phase) → waterfall phases relative to the first. */
export function timelinePhases(timeline) {
  if (!timeline?.length) return [];
  const t0 = Math.min(...timeline.map((p) => Date.parse(p.started_at)));
  return timeline.map((p) => ({ phase: p.phase, start_ms: Date.parse(p.started_at) - t0, duration_ms: p.duration_ms }));
}

/** @param {any} vm */
export function vmHeader(vm) {
  const ops = VM_OPS[vm.state] ?? ['delete'];
  return html`<h3><span class="vm-name">${vm.name}</span> ${stateBadge(vm.state)}</h3>
    <p class="muted">${vm.kind ?? 'vm'} · ${vm.id} · ${vm.backend}/${vm.accelerator} · ${vm.vcpus} vCPU · ${vm.memory_mib} MiB · ${vm.ip ?? 'no network'}${vm.exit_code !== null && vm.exit_code !== undefined ? ` · exit ${vm.exit_code}` : ''}</p>
    ${vm.state_reason ? html`<p class="reason">${vm.state_reason}</p>` : ''}
    ${Object.keys(vm.labels ?? {}).some((k) => k !== 'kiln.kind') ? html`<p class="vm-labels">${labelChips(vm.labels)}</p>` : ''}
    <p class="ops">${ops.map((op) => html`<button data-op="${op}" class="${op === 'delete' ? 'danger' : ''}">${op}</button>`)}</p>`;
}

export function vmTimeline(vm) {
  return waterfall(timelinePhases(vm.timeline), 'provision timeline');
}

/** Agent stats (GET /v1/vms/{id}/stats): CPU and memory gauges. */
export function vmStats(s) {
  if (!s) return html`<p class="muted">stats: VM not ready</p>`;
  const memPct = s.memory_limit_bytes ? (s.memory_usage_bytes / s.memory_limit_bytes) * 100 : 0;
  const cpuPct = s.vcpus ? s.guest_cpu_percent / s.vcpus : s.guest_cpu_percent;
  return html`<div class="stats">
    <div><span class="muted">CPU</span> <meter min="0" max="100" value="${cpuPct.toFixed(1)}"></meter> ${s.guest_cpu_percent.toFixed(1)}% of ${s.vcpus} vCPU</div>
    <div><span class="muted">memory</span> <meter min="0" max="100" value="${memPct.toFixed(1)}"></meter> ${bytes(s.memory_usage_bytes)} / ${bytes(s.memory_limit_bytes)}</div></div>`;
}

/** Exec's result: exit code and both streams as text. */
export function execResult(r) {
  return html`<div class="exec-result"><span class="badge ${r.exit_code === 0 ? 'state-ready' : 'state-failed'}">exit ${r.exit_code ?? r.signal ?? '?'}</span>${r.timed_out ? ' timed out' : ''}
    ${r.stdout ? html`<pre class="stdout">${r.stdout}</pre>` : ''}${r.stderr ? html`<pre class="stderr">${r.stderr}</pre>` : ''}</div>`;
}

export function createVmForm() {
  return html`<form id="create-vm" class="card" autocomplete="off">
    <h4>Create a VM</h4>
    <div class="grid">
      <label>name <input name="name" placeholder="auto"></label>
      <label>from <select name="mode"><option value="image">image</option><option value="template">template clone</option><option value="snapshot">snapshot</option></select></label>
      <label>image / template / snapshot <input name="image" placeholder="default"></label>
      <label>vCPUs <input name="vcpus" type="number" min="1" placeholder="1"></label>
      <label>memory MiB <input name="memory_mib" type="number" min="128" step="64" placeholder="128"></label>
      <label>ports <input name="ports" placeholder="8080:80, 5353:53/udp"></label>
      <label class="wide">command <input name="cmd" placeholder="sh line, or a JSON argv"></label>
      <label class="wide">env <textarea name="env" rows="2" placeholder="NAME=value, one a line"></textarea></label>
      <label class="check"><input type="checkbox" name="classic"> classic (Debian, systemd, console shell)</label>
    </div>
    <button type="submit">create</button></form>`;
}

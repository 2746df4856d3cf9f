// Functions: rows, the deploy form with its code editor, invocation results and timelines.
import { html } from '../lib/html.js';
import { ago, ms } from '../lib/format.js';
import { stateBadge, waterfall } from './common.js';

export const SAMPLE_CODE = {
  node: 'async function handler(event) {\n  return { hello: event?.who ?? "world", at: Date.now() };\n}\n',
  python: 'def handler(event, context):\n    return {"hello": (event or {}).get("who", "world")}\n',
};

export function fnRow(f) {
  return html`<tr class="row" data-name="${f.name}"><td class="name">${f.name}</td><td>${f.runtime}</td><td>v${f.version}</td>
    <td class="state">${stateBadge(f.state)}</td><td>${f.instances.length}${f.queued ? ` (+${f.queued} queued)` : ''}</td>
    <td>${f.memory_mb} MiB</td><td class="muted">${ago(f.updated_at)}</td></tr>`;
}

export function fnTable() {
  return html`<table class="list"><thead><tr><th>name</th><th>runtime</th><th>version</th><th>state</th><th>instances</th><th>memory</th><th>updated</th></tr></thead><tbody id="fn-rows"></tbody></table>`;
}

/** The deploy form; `f` pre-fills it to deploy a new version of an existing function. */
export function deployForm(f = null) {
  const runtime = f?.runtime ?? 'node';
  return html`<form id="deploy-fn" class="card" autocomplete="off">
    <h4>${f ? html`Deploy a new version of <b>${f.name}</b>` : 'Deploy a function'}</h4>
    <div class="grid">
      <label>name <input name="name" value="${f?.name ?? ''}" ${f ? 'readonly' : ''} required></label>
      <label>runtime <select name="runtime">${['node', 'python'].map((r) => html`<option ${r === runtime ? 'selected' : ''}>${r}</option>`)}</select></label>
      <label>handler <input name="handler" placeholder="handler" value="${f?.handler ?? ''}"></label>
      <label>memory MiB <input name="memory_mb" type="number" min="128" step="64" placeholder="256"></label>
      <label class="wide">code <textarea name="code" class="code" rows="8" spellcheck="false">${f ? '' : SAMPLE_CODE[runtime]}</textarea></label>
      <label class="wide">env <textarea name="env" rows="2" placeholder="NAME=value, one a line"></textarea></label>
    </div>
    <button type="submit">deploy</button></form>`;
}

export function fnDetail(f) {
  return html`<h3>${f.name} <span class="muted">v${f.version}</span> ${stateBadge(f.state)}</h3>
    <p class="muted">${f.runtime} · handler ${f.handler} · ${f.vcpu} vCPU · ${f.memory_mb} MiB · ${f.min_instances}–${f.max_instances} instances · concurrency ${f.concurrency}</p>
    ${f.load_error ? html`<div class="api-error"><code>${f.load_error.type}</code> ${f.load_error.message}</div>` : ''}
    <p class="ops"><button data-op="redeploy">new version</button><button data-op="delete" class="danger">delete</button></p>
    <table class="mini"><tr><th>instance VM</th><th>v</th><th>state</th><th>in flight</th><th>origin</th></tr>
    ${f.instances.map((i) => html`<tr><td>${i.vm ?? '…'}</td><td>${i.version}</td><td>${i.state}</td><td>${i.inflight}</td><td>${i.origin ?? ''}</td></tr>`)}</table>`;
}

export function invokeForm() {
  return html`<form id="invoke-fn" class="card" autocomplete="off"><h4>Invoke</h4>
    <label class="wide">event (JSON) <textarea name="event" class="code" rows="3" spellcheck="false">{"who": "kiln"}</textarea></label>
    <button type="submit">invoke</button></form>`;
}

/**
 * An invocation's phases ({phase, ms} in order) as a waterfall: each starts where the last
 * ended, except `instance.start.*`, which says how the instance's VM came up: it is part of
 * getting the instance (or happened before the call, for a pooled one), so it is drawn ending
 * where getting the instance ended, clipped at the call's start (its label keeps its full
 * length), and takes no time of its own.
 */
export function invocationPhases(timeline) {
  let t = 0;
  return (timeline ?? []).map((p) => {
    if (p.phase.startsWith('instance.start.')) {
      const start = Math.max(0, t - p.ms);
      return { phase: p.phase, start_ms: start, duration_ms: t - start, label_ms: p.ms };
    }
    const out = { phase: p.phase, start_ms: t, duration_ms: p.ms };
    t += p.ms;
    return out;
  });
}

/** POST …/invoke?detail=1's answer: the result and the invocation's own account. */
export function invocationResult(r) {
  const inv = r.invocation;
  return html`<div class="invocation">
    <p>${stateBadge(inv.status)} ${ms(inv.duration_ms)} <span class="muted">(guest ${ms(inv.guest_ms)}, ${inv.cold ? `cold: ${inv.source ?? '?'}${inv.instance_start ? `, ${inv.instance_start}` : ''}` : 'warm'})</span></p>
    <pre class="result">${JSON.stringify(r.result, null, 2)}</pre>
    ${waterfall(invocationPhases(inv.timeline), 'invocation timeline')}
    ${inv.logs ? html`<pre class="logs">${inv.logs}</pre>` : ''}</div>`;
}

export function invocationRows(list) {
  return html`<table class="mini"><tr><th>status</th><th>total</th><th>guest</th><th>start</th><th>when</th></tr>
    ${list.map((i) => html`<tr><td>${stateBadge(i.status)}</td><td>${ms(i.duration_ms)}</td><td>${ms(i.guest_ms)}</td><td>${i.cold ? `cold (${i.source ?? '?'})` : 'warm'}</td><td class="muted">${ago(i.started_at)}</td></tr>`)}</table>`;
}

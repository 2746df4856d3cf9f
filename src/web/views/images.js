// Images (with pull progress from image.progress events), snapshots and templates.
import { html } from '../lib/html.js';
import { ago, bytes } from '../lib/format.js';
import { stateBadge } from './common.js';

export function imageRow(i, progress) {
  return html`<tr class="row" data-id="${i.id}"><td class="name">${i.name}</td><td class="state">${stateBadge(i.state)}</td>
    <td>${i.state === 'pulling' ? pullBar(progress) : i.format}</td><td>${bytes(i.size_bytes)}</td><td>${i.source ?? 'import'}</td><td class="muted">${ago(i.created_at)}</td></tr>`;
}

export function imageTable() {
  return html`<table class="list"><thead><tr><th>name</th><th>state</th><th>format / progress</th><th>size</th><th>source</th><th>created</th></tr></thead><tbody id="img-rows"></tbody></table>`;
}

/**
 * Pull progress from image.progress events: bytes per layer, summed. A pull downloads layers,
 * then converts: the phase is shown beside the bar.
 */
export class PullProgress {
  constructor() {
    /** @type {Map<string, {phase: string, layers: Map<string, {bytes: number, total: number}>}>} */
    this.byImage = new Map();
  }
  /** @param {any} e an image.* event; returns the image id it touched, if any */
  add(e) {
    if (e.type === 'image.progress') {
      const p = this.byImage.get(e.id) ?? { phase: '', layers: new Map() };
      p.phase = e.phase;
      if (e.layer && typeof e.total === 'number') p.layers.set(e.layer, { bytes: e.bytes ?? 0, total: e.total });
      this.byImage.set(e.id, p);
      return e.id;
    }
    if (e.type === 'image.created' || e.type === 'image.failed' || e.type === 'image.deleted') {
      this.byImage.delete(e.id);
      return e.id;
    }
    return null;
  }
  get(id) {
    const p = this.byImage.get(id);
    if (!p) return null;
    let done = 0;
    let total = 0;
    for (const l of p.layers.values()) {
      done += l.bytes;
      total += l.total;
    }
    return { phase: p.phase, bytes: done, total };
  }
}

export function pullBar(p) {
  if (!p) return html`<span class="muted">starting…</span>`;
  const pct = p.total ? Math.min(100, (p.bytes / p.total) * 100) : 0;
  return html`<span class="pull"><progress max="100" value="${pct.toFixed(1)}"></progress> ${p.phase} ${bytes(p.bytes)}${p.total ? ` / ${bytes(p.total)}` : ''}</span>`;
}

export function pullForm() {
  return html`<form id="pull-img" class="card inline" autocomplete="off"><label>pull <input name="ref" placeholder="registry/app:tag" required></label><button type="submit">pull</button></form>`;
}

export function snapshotRow(s) {
  return html`<tr class="row" data-id="${s.id}"><td class="name">${s.id}</td><td>${s.source_vm ?? (s.template ? `template ${s.template}` : '')}</td>
    <td>${s.memory}</td><td>${bytes(s.size_bytes)}</td><td>${s.clones.length}</td><td class="muted">${ago(s.created_at)}</td>
    <td><button data-clone="${s.id}">clone</button> <button data-delete-snapshot="${s.id}" class="danger">delete</button></td></tr>`;
}

export function templateRow(t) {
  return html`<tr class="row" data-id="${t.id}"><td class="name">${t.id}</td><td>${t.image}</td><td class="state">${stateBadge(t.state)}</td>
    <td>${t.vcpus} × ${t.memory_mib} MiB</td><td class="muted">${ago(t.created_at)}</td><td><button data-clone-template="${t.id}" ${t.state === 'ready' ? '' : 'disabled'}>clone</button></td></tr>`;
}

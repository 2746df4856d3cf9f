// Pieces several views share (pure templates).
import { html } from '../lib/html.js';
import { ms } from '../lib/format.js';

/** @param {string} s */
export const stateBadge = (s) => html`<span class="badge state-${s}">${s}</span>`;

/** An API (or form) error with its stable code and message. @param {{code?: string, message: string, status?: number}} e */
export function errorBox(e) {
  return html`<div class="api-error" role="alert"><code>${e.code ?? 'ERROR'}</code>${e.status ? html` <span class="muted">HTTP ${e.status}</span>` : ''} ${e.message}</div>`;
}

/**
 * A waterfall: each phase a bar placed at its start and sized by its duration, on one time
 * axis from the first start to the last end. Phases: {phase, start_ms, duration_ms|null,
 * label_ms?} (label_ms: the time shown, when the bar is clipped).
 * @param {{phase: string, start_ms: number, duration_ms: number|null, label_ms?: number}[]} phases
 */
export function waterfall(phases, title = 'timeline') {
  if (!phases.length) return html`<p class="muted">no ${title}</p>`;
  const end = Math.max(...phases.map((p) => p.start_ms + (p.duration_ms ?? 0)), 1);
  const pct = (v) => `${Math.max(0, Math.min(100, (v / end) * 100)).toFixed(2)}%`;
  return html`<div class="waterfall" aria-label="${title}">${phases.map((p) => html`<div class="wf-row${p.duration_ms === null ? ' running' : ''}">
    <span class="wf-name">${p.phase}</span>
    <span class="wf-track"><span class="wf-bar" style="margin-left:${pct(p.start_ms)};width:${p.duration_ms === null ? '2px' : pct(Math.max(p.duration_ms, end / 400))}"></span></span>
    <span class="wf-ms">${ms(p.label_ms ?? p.duration_ms)}</span></div>`)}
    <div class="wf-row wf-total"><span class="wf-name">total</span><span class="wf-track"></span><span class="wf-ms">${ms(end)}</span></div></div>`;
}

/** A confirmation step inside the page (no window.confirm: tests and keyboards can reach it). */
export function confirmBar(what, op) {
  return html`<div class="confirm" role="alertdialog"><span>${op} ${what}?</span>
    <button class="danger" data-confirm="yes">${op}</button><button data-confirm="no">cancel</button></div>`;
}

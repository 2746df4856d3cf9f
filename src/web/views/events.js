// The live event feed (pure template).
import { html } from '../lib/html.js';

export function eventRow(e) {
  const { seq, ts, type, vm, ...rest } = e;
  const detail = JSON.stringify(rest);
  return html`<tr data-seq="${seq}"><td>${String(ts ?? '').slice(11, 23)}</td><td>${type}</td><td>${vm ?? ''}</td><td class="muted">${detail.length > 200 ? `${detail.slice(0, 200)}…` : detail}</td></tr>`;
}

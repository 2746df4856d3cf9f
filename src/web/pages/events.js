// The live event feed: newest first, rows added as they come (never a full redraw).
import { html } from '../lib/html.js';
import { toElement } from '../lib/dom.js';
import { eventRow } from '../views/events.js';

const SHOWN = 300;

/** @param {HTMLElement} root @param {{onEvent: (f: (e: any) => void) => () => void, recent: any[]}} ctx */
export function mountEvents(root, ctx) {
  root.innerHTML = String(html`<section class="page wide"><h2>Events <span class="muted">live</span></h2>
    <table class="list"><thead><tr><th>time</th><th>type</th><th>vm</th><th>data</th></tr></thead><tbody id="ev-rows"></tbody></table></section>`);
  const tbody = /** @type {HTMLElement} */ (root.querySelector('#ev-rows'));
  const add = (e) => {
    tbody.insertBefore(toElement(eventRow(e)), tbody.firstChild);
    while (tbody.children.length > SHOWN) tbody.lastElementChild?.remove();
  };
  for (const e of ctx.recent.slice(-SHOWN)) add(e);
  return ctx.onEvent(add);
}

// Containers: the run form, the live list, and the selected container's ops and logs.
import { html } from '../lib/html.js';
import { markSelected, patchList, setHtml } from '../lib/dom.js';
import { runContainerBody } from '../lib/forms.js';
import { confirmBar, stateBadge } from '../views/common.js';
import { containerRow, containerTable, runForm } from '../views/containers.js';
import { busy, formFields, showError } from './context.js';

const OPS = { running: ['stop', 'pause', 'delete'], paused: ['resume', 'delete'], starting: ['delete'], restarting: ['stop', 'delete'], stopping: ['delete'], exited: ['start', 'delete'], failed: ['start', 'delete'] };

/** @param {HTMLElement} root @param {{api: import('../lib/api.js').Api, onEvent: (f: (e: any) => void) => () => void}} ctx */
export function mountContainers(root, ctx) {
  const { api } = ctx;
  root.innerHTML = String(html`<section class="page"><details class="create"><summary>Run</summary>${runForm()}</details>
    <h2>Containers <span class="muted" id="ct-count"></span></h2><div id="ct-list-error"></div>${containerTable()}</section>
    <aside id="detail" hidden><div id="ct-head"></div><div id="ct-confirm"></div><div id="ct-error"></div><h4>Logs</h4><pre id="ct-logs" class="logs"></pre></aside>`);
  const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (root.querySelector(s));
  const rows = $('#ct-rows');
  /** @type {Map<string, any>} */
  const cts = new Map();
  let selected = null;
  let disposed = false;
  const head = (c) => html`<h3>${c.name} ${stateBadge(c.state)}</h3><p class="muted">${c.id} · ${c.image} · ${c.command.join(' ')}</p>
    ${c.state_reason ? html`<p class="reason">${c.state_reason}</p>` : ''}<p class="ops">${(OPS[c.state] ?? ['delete']).map((op) => html`<button data-op="${op}" class="${op === 'delete' ? 'danger' : ''}">${op}</button>`)}</p>`;
  const draw = () => {
    patchList(rows, [...cts.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)), (c) => c.id, containerRow);
    $('#ct-count').textContent = String(cts.size);
    const c = selected && cts.get(selected);
    if (c) setHtml($('#ct-head'), head(c));
  };
  const refresh = async (id) => {
    const c = await api.get(`/v1/containers/${encodeURIComponent(id)}`).catch((e) => (e.status === 404 ? null : undefined));
    if (c === undefined || disposed) return;
    if (c) cts.set(id, c);
    else cts.delete(id);
    draw();
    if (selected === id) void logs(id);
  };
  const logs = async (id) => {
    const text = await api.get(`/v1/containers/${encodeURIComponent(id)}/logs?tail=200`).catch((e) => `${e.code}: ${e.message}`);
    if (selected === id) $('#ct-logs').textContent = String(text ?? '');
  };
  const timers = new Map();
  const off = ctx.onEvent((e) => {
    if (!e.vm || !(e.type.startsWith('container.') || (e.type === 'vm.state' && cts.has(e.vm)))) return;
    clearTimeout(timers.get(e.vm));
    timers.set(e.vm, setTimeout(() => refresh(e.vm), 150));
  });
  api.get('/v1/containers?all=1').then((r) => {
    for (const c of r.containers) cts.set(c.id, c);
    draw();
  }, (e) => showError($('#ct-list-error'), e));

  // The selected container's logs are re-read every 2 s while it runs (a tail, not a stream:
  // a page left open holds no long request).
  const logTimer = setInterval(() => {
    const c = selected && cts.get(selected);
    if (c && (c.state === 'running' || c.state === 'starting' || c.state === 'restarting')) void logs(c.id);
  }, 2000);
  const select = (id) => {
    selected = id;
    markSelected(rows, id);
    $('#detail').hidden = !id;
    for (const s of ['#ct-error', '#ct-confirm']) $(s).innerHTML = '';
    if (!id) return;
    delete $('#ct-head').dataset.html;
    draw();
    void logs(id);
  };
  rows.addEventListener('click', (ev) => {
    const tr = /** @type {HTMLElement} */ (ev.target).closest('tr[data-key]');
    if (tr) select(/** @type {HTMLElement} */ (tr).dataset.key ?? null);
  });
  const run = async (c, op) => {
    try {
      const id = encodeURIComponent(c.id);
      if (op === 'delete') {
        await api.del(`/v1/containers/${id}?force=1`);
        cts.delete(c.id);
        select(null);
      } else cts.set(c.id, await api.post(`/v1/containers/${id}/${op}`));
      draw();
    } catch (e) {
      showError($('#ct-error'), e);
    }
  };
  $('#detail').addEventListener('click', (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target);
    const c = selected && cts.get(selected);
    if (!c) return;
    if (t.dataset.op) {
      if (t.dataset.op === 'start' || t.dataset.op === 'resume') return void run(c, t.dataset.op);
      setHtml($('#ct-confirm'), confirmBar(c.name, t.dataset.op));
      $('#ct-confirm').dataset.op = t.dataset.op;
    } else if (t.dataset.confirm) {
      const op = $('#ct-confirm').dataset.op;
      $('#ct-confirm').innerHTML = '';
      delete $('#ct-confirm').dataset.html;
      if (t.dataset.confirm === 'yes' && op) void run(c, op);
    }
  });
  const form = /** @type {HTMLFormElement} */ ($('#run-ct'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(form, async () => {
      const c = await api.post('/v1/containers', runContainerBody(formFields(form)));
      form.reset();
      cts.set(c.id, c);
      draw();
      select(c.id);
    });
  });
  return () => {
    disposed = true;
    off();
    clearInterval(logTimer);
    for (const t of timers.values()) clearTimeout(t);
  };
}

// Machines: the create form, the live list (patched per event), and the selected VM's panel
// (header and ops, provision waterfall, agent stats, console, exec, snapshot).
import { html } from '../lib/html.js';
import { markSelected, patchList, setHtml } from '../lib/dom.js';
import { createVmBody, parseCmd } from '../lib/forms.js';
import { confirmBar } from '../views/common.js';
import { CONFIRM_OPS, createVmForm, execResult, vmHeader, vmRow, vmStats, vmTable, vmTimeline } from '../views/vms.js';
import { busy, formFields, showError } from './context.js';

/** @param {HTMLElement} root @param {{api: import('../lib/api.js').Api, onEvent: (f: (e: any) => void) => () => void}} ctx */
export function mountMachines(root, ctx) {
  const { api } = ctx;
  root.innerHTML = String(html`<section class="page">
    <details class="create" open><summary>Create</summary>${createVmForm()}</details>
    <h2>Machines <span class="muted" id="vm-count"></span></h2>
    <div id="vm-list-error"></div>${vmTable()}</section>
    <aside id="detail" hidden>
      <div id="vm-head"></div><div id="vm-confirm"></div><div id="vm-error"></div><div id="vm-note"></div>
      <h4>Provision timeline</h4><div id="vm-timeline"></div>
      <h4>Resources</h4><div id="vm-stats"></div>
      <h4>Console <span id="console-status" class="console-status"></span>
        <button id="console-reconnect" type="button">reconnect</button><button id="console-size" type="button" title="tell the guest's tty the terminal size">stty size</button></h4>
      <div id="console" class="console"></div>
      <form id="vm-exec" class="card inline" autocomplete="off"><label>exec <input name="cmd" placeholder="uname -a"></label><button type="submit">run</button><div class="form-error"></div></form>
      <div id="exec-out"></div>
    </aside>`);
  const rows = /** @type {HTMLElement} */ (root.querySelector('#vm-rows'));
  const detail = /** @type {HTMLElement} */ (root.querySelector('#detail'));
  const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (root.querySelector(s));
  /** @type {Map<string, any>} */
  const vms = new Map();
  /** @type {string|null} */
  let selected = null;
  /** @type {any} */
  let consoleView = null;
  /** @type {ReturnType<typeof setInterval>|undefined} */
  let statsTimer;
  let disposed = false;

  const sorted = () => [...vms.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
  const draw = () => {
    patchList(rows, sorted(), (v) => v.id, vmRow);
    $('#vm-count').textContent = String(vms.size);
    if (selected) drawDetail();
  };

  function drawDetail() {
    const vm = selected && vms.get(selected);
    if (!vm) return;
    setHtml($('#vm-head'), vmHeader(vm));
    setHtml($('#vm-timeline'), vmTimeline(vm));
    consoleView?.stateChanged(vm.state);
  }

  async function refresh(id) {
    try {
      const vm = await api.get(`/v1/vms/${encodeURIComponent(id)}`);
      vms.set(vm.id, vm);
    } catch (e) {
      if (/** @type {any} */ (e).status === 404) vms.delete(id);
      else return;
    }
    if (!disposed) draw();
  }

  // Events first, then the list: nothing created in between is missed.
  const pending = new Map();
  const off = ctx.onEvent((e) => {
    if (!e.vm || !e.type.startsWith('vm.')) return;
    if (e.type === 'vm.deleted') {
      vms.delete(e.vm);
      if (selected === e.vm) select(null);
      return draw();
    }
    // The state is in the event: shown at once; the rest (timeline, ip) follows from a GET.
    const known = vms.get(e.vm);
    if (!known && e.type === 'vm.created') {
      vms.set(e.vm, { id: e.vm, name: e.name, kind: e.kind, labels: e.labels ?? {}, state: 'creating', image: { name: e.image ?? null }, created_at: e.ts, timeline: [] });
      draw();
    }
    if (known && e.type === 'vm.state') {
      vms.set(e.vm, { ...known, state: e.to, state_reason: e.reason ?? null });
      draw();
    }
    clearTimeout(pending.get(e.vm));
    pending.set(e.vm, setTimeout(() => refresh(e.vm), 100));
  });
  api.get('/v1/vms').then((r) => {
    for (const v of r.vms) if (!vms.has(v.id)) vms.set(v.id, v);
    draw();
  }, (e) => showError($('#vm-list-error'), e));

  function select(id) {
    if (id === selected) return;
    consoleView?.dispose();
    consoleView = null;
    clearInterval(statsTimer);
    selected = id;
    markSelected(rows, id);
    detail.hidden = !id;
    for (const s of ['#vm-confirm', '#vm-error', '#vm-note', '#exec-out', '#vm-stats']) $(s).innerHTML = '';
    if (!id) return;
    for (const s of ['#vm-head', '#vm-timeline']) delete $(s).dataset.html;
    drawDetail();
    consoleView = mountConsoleLazy(id);
    const pollStats = async () => {
      const vm = vms.get(id);
      if (!vm || vm.state !== 'ready' || selected !== id) return setHtml($('#vm-stats'), vmStats(null));
      const s = await api.get(`/v1/vms/${encodeURIComponent(id)}/stats?interval_ms=500`).catch(() => null);
      if (selected === id) setHtml($('#vm-stats'), vmStats(s));
    };
    void pollStats();
    statsTimer = setInterval(pollStats, 3000);
  }

  // xterm loads on first use: the list works even where the console library failed to load.
  function mountConsoleLazy(id) {
    const box = $('#console');
    box.innerHTML = '';
    let view = null;
    let gone = false;
    import('./console.js').then((m) => {
      if (gone) return;
      view = m.mountConsole(box, $('#console-status'), api, id, () => vms.get(id)?.state);
    }, (e) => showError($('#vm-error'), e));
    return {
      stateChanged: (s) => view?.stateChanged(s),
      reconnect: () => view?.reconnect(),
      sendSize: () => view?.sendSize(),
      dispose: () => {
        gone = true;
        view?.dispose();
      },
    };
  }

  rows.addEventListener('click', (ev) => {
    const tr = /** @type {HTMLElement} */ (ev.target).closest('tr[data-key]');
    if (tr) select(/** @type {HTMLElement} */ (tr).dataset.key ?? null);
  });

  async function runOp(vm, op) {
    showError($('#vm-error'), null);
    try {
      const id = encodeURIComponent(vm.id);
      if (op === 'delete') await api.del(`/v1/vms/${id}`);
      else if (op === 'snapshot') {
        const s = await api.post(`/v1/vms/${id}/snapshots`, {});
        setHtml($('#vm-note'), html`<p class="note">snapshot <code>${s.id}</code> taken (${s.memory}); clone it from Images → Snapshots.</p>`);
      } else vms.set(vm.id, await api.post(`/v1/vms/${id}/${op}`));
      draw();
    } catch (e) {
      showError($('#vm-error'), e);
    }
  }

  detail.addEventListener('click', (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target);
    const vm = selected && vms.get(selected);
    if (!vm) return;
    if (t.id === 'console-reconnect') return consoleView?.reconnect();
    if (t.id === 'console-size') return consoleView?.sendSize();
    const op = t.dataset.op;
    if (op) {
      if (!CONFIRM_OPS.has(op)) return void runOp(vm, op);
      setHtml($('#vm-confirm'), confirmBar(vm.name, op));
      $('#vm-confirm').dataset.op = op;
      return;
    }
    if (t.dataset.confirm) {
      const pendingOp = $('#vm-confirm').dataset.op;
      $('#vm-confirm').innerHTML = '';
      delete $('#vm-confirm').dataset.html;
      if (t.dataset.confirm === 'yes' && pendingOp) void runOp(vm, pendingOp);
    }
  });

  const execForm = /** @type {HTMLFormElement} */ ($('#vm-exec'));
  execForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = selected;
    if (!id) return;
    void busy(execForm, async () => {
      const cmd = parseCmd(formFields(execForm).cmd);
      if (!cmd) return;
      const r = await api.post(`/v1/vms/${encodeURIComponent(id)}/exec`, { cmd, timeout_ms: 60_000 });
      setHtml($('#exec-out'), execResult(r));
    });
  });

  const createForm = /** @type {HTMLFormElement} */ ($('#create-vm'));
  createForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(createForm, async () => {
      const vm = await api.post('/v1/vms', createVmBody(formFields(createForm)));
      createForm.reset();
      // The answer is the VM in `creating`: shown now; events carry it to ready.
      if (!vms.has(vm.id)) vms.set(vm.id, vm);
      draw();
      select(vm.id);
    });
  });

  return () => {
    disposed = true;
    off();
    for (const t of pending.values()) clearTimeout(t);
    clearInterval(statsTimer);
    consoleView?.dispose();
  };
}

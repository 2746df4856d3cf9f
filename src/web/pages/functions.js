// Functions: deploy (inline code editor), the list, and the selected function's panel with
// the invoke form, the last result and its timeline, and recent invocations.
import { html } from '../lib/html.js';
import { markSelected, patchList, setHtml } from '../lib/dom.js';
import { parseEnv, parseEvent } from '../lib/forms.js';
import { confirmBar } from '../views/common.js';
import { deployForm, fnDetail, fnRow, fnTable, invocationResult, invocationRows, invokeForm, SAMPLE_CODE } from '../views/functions.js';
import { busy, formFields, showError } from './context.js';

/** Tab inserts two spaces in the code editor instead of leaving it. @param {HTMLTextAreaElement} ta */
function codeEditor(ta) {
  ta.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Tab' || ev.shiftKey) return;
    ev.preventDefault();
    const { selectionStart: s, selectionEnd: e, value } = ta;
    ta.value = `${value.slice(0, s)}  ${value.slice(e)}`;
    ta.selectionStart = ta.selectionEnd = s + 2;
  });
}

/** @param {HTMLElement} root @param {{api: import('../lib/api.js').Api, onEvent: (f: (e: any) => void) => () => void}} ctx */
export function mountFunctions(root, ctx) {
  const { api } = ctx;
  root.innerHTML = String(html`<section class="page">
    <details class="create" open><summary>Deploy</summary><div id="deploy-slot"></div></details>
    <h2>Functions <span class="muted" id="fn-count"></span></h2><div id="fn-list-error"></div>${fnTable()}
    <p class="muted" id="fn-pool"></p></section>
    <aside id="detail" hidden><div id="fn-head"></div><div id="fn-confirm"></div><div id="fn-error"></div>
      ${invokeForm()}<div id="fn-result"></div><h4>Recent invocations</h4><div id="fn-invocations"></div></aside>`);
  const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (root.querySelector(s));
  const rows = $('#fn-rows');
  /** @type {Map<string, any>} */
  const fns = new Map();
  /** @type {string|null} */
  let selected = null;
  let disposed = false;

  function mountDeploy(f = null) {
    setHtml($('#deploy-slot'), deployForm(f));
    const form = /** @type {HTMLFormElement} */ ($('#deploy-fn'));
    const code = /** @type {HTMLTextAreaElement} */ (form.elements.namedItem('code'));
    codeEditor(code);
    /** @type {HTMLSelectElement} */ (form.elements.namedItem('runtime')).addEventListener('change', (ev) => {
      const rt = /** @type {HTMLSelectElement} */ (ev.target).value;
      if (Object.values(SAMPLE_CODE).includes(code.value)) code.value = SAMPLE_CODE[/** @type {'node'|'python'} */ (rt)];
    });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void busy(form, async () => {
        const v = formFields(form);
        const body = { runtime: v.runtime, code: v.code, ...(v.handler ? { handler: v.handler } : {}), ...(v.memory_mb ? { memory_mb: Number(v.memory_mb) } : {}) };
        const env = parseEnv(v.env);
        if (Object.keys(env).length) body.env = env;
        const f2 = f ? await api.put(`/v1/functions/${encodeURIComponent(f.name)}`, body) : await api.post('/v1/functions', { name: v.name.trim(), ...body });
        fns.set(f2.name, f2);
        draw();
        select(f2.name);
      });
    });
  }
  mountDeploy();

  const draw = () => {
    patchList(rows, [...fns.values()].sort((a, b) => a.name.localeCompare(b.name)), (f) => f.name, fnRow);
    $('#fn-count').textContent = String(fns.size);
    const f = selected && fns.get(selected);
    if (f) setHtml($('#fn-head'), fnDetail(f));
  };
  const load = async () => {
    try {
      const r = await api.get('/v1/functions');
      if (disposed) return;
      const names = new Set(r.functions.map((f) => f.name));
      for (const n of fns.keys()) if (!names.has(n)) fns.delete(n);
      for (const f of r.functions) fns.set(f.name, f);
      $('#fn-pool').textContent = r.pool.length ? `warm pool: ${r.pool.map((p) => `${p.runtime} ${p.ready}/${p.target} ready${p.filling ? `, ${p.filling} filling` : ''}`).join(' · ')}` : '';
      draw();
    } catch (e) {
      showError($('#fn-list-error'), e);
    }
  };
  async function loadInvocations(name) {
    const r = await api.get(`/v1/functions/${encodeURIComponent(name)}/invocations?limit=20`).catch(() => null);
    if (r && selected === name) setHtml($('#fn-invocations'), invocationRows(r.invocations));
  }
  // Instances are VMs: their comings and goings change the list's instance counts.
  let timer;
  const off = ctx.onEvent((e) => {
    if (e.type !== 'vm.created' && e.type !== 'vm.deleted' && !(e.type === 'vm.state' && e.to === 'ready')) return;
    clearTimeout(timer);
    timer = setTimeout(load, 400);
  });
  void load();

  function select(name) {
    selected = name;
    markSelected(rows, name);
    $('#detail').hidden = !name;
    for (const s of ['#fn-result', '#fn-invocations', '#fn-error', '#fn-confirm']) $(s).innerHTML = '';
    if (!name) return;
    delete $('#fn-head').dataset.html;
    draw();
    void loadInvocations(name);
  }
  rows.addEventListener('click', (ev) => {
    const tr = /** @type {HTMLElement} */ (ev.target).closest('tr[data-key]');
    if (tr) select(/** @type {HTMLElement} */ (tr).dataset.key ?? null);
  });

  const invoke = /** @type {HTMLFormElement} */ ($('#invoke-fn'));
  codeEditor(/** @type {HTMLTextAreaElement} */ (invoke.elements.namedItem('event')));
  invoke.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = selected;
    if (!name) return;
    void busy(invoke, async () => {
      const event = parseEvent(formFields(invoke).event);
      const r = await api.post(`/v1/functions/${encodeURIComponent(name)}/invoke?detail=1`, event);
      if (selected !== name) return;
      setHtml($('#fn-result'), invocationResult(r));
      void loadInvocations(name);
      void load();
    });
  });

  $('#detail').addEventListener('click', (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target);
    const f = selected && fns.get(selected);
    if (!f) return;
    if (t.dataset.op === 'delete') return setHtml($('#fn-confirm'), confirmBar(f.name, 'delete'));
    if (t.dataset.op === 'redeploy') return mountDeploy(f);
    if (t.dataset.confirm) {
      $('#fn-confirm').innerHTML = '';
      delete $('#fn-confirm').dataset.html;
      if (t.dataset.confirm !== 'yes') return;
      api.del(`/v1/functions/${encodeURIComponent(f.name)}`).then(() => {
        fns.delete(f.name);
        select(null);
        draw();
      }, (e) => showError($('#fn-error'), e));
    }
  });

  return () => {
    disposed = true;
    off();
    clearTimeout(timer);
  };
}

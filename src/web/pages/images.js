// Images (pull with live progress), snapshots (clone, delete) and templates (build, clone).
import { html } from '../lib/html.js';
import { patchList, setHtml } from '../lib/dom.js';
import { imageRow, imageTable, pullForm, snapshotRow, templateRow } from '../views/images.js';
import { busy, formFields, showError } from './context.js';

/**
 * @param {HTMLElement} root
 * @param {{api: import('../lib/api.js').Api, onEvent: (f: (e: any) => void) => () => void, pulls: import('../views/images.js').PullProgress, go: (hash: string) => void}} ctx
 */
export function mountImages(root, ctx) {
  const { api, pulls } = ctx;
  root.innerHTML = String(html`<section class="page wide">
    <h2>Images <span class="muted" id="img-count"></span></h2>${pullForm()}<div id="img-error"></div>${imageTable()}
    <h2>Snapshots</h2><div id="snap-error"></div>
    <table class="list"><thead><tr><th>id</th><th>from</th><th>memory</th><th>size</th><th>clones</th><th>created</th><th></th></tr></thead><tbody id="snap-rows"></tbody></table>
    <h2>Templates</h2>
    <form id="build-tpl" class="card inline" autocomplete="off"><label>template of image <input name="image" placeholder="default" required></label><button type="submit">build / get</button></form>
    <div id="tpl-error"></div>
    <table class="list"><thead><tr><th>id</th><th>image</th><th>state</th><th>size</th><th>created</th><th></th></tr></thead><tbody id="tpl-rows"></tbody></table>
    <div id="clone-note"></div></section>`);
  const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (root.querySelector(s));
  /** @type {Map<string, any>} */
  const images = new Map();
  let disposed = false;
  const drawImages = () => {
    patchList($('#img-rows'), [...images.values()].sort((a, b) => a.name.localeCompare(b.name)), (i) => i.id, (i) => imageRow(i, pulls.get(i.id)));
    $('#img-count').textContent = String(images.size);
  };
  const loadImages = async () => {
    const r = await api.get('/v1/images').catch((e) => showError($('#img-error'), e));
    if (!r || disposed) return;
    images.clear();
    for (const i of r.images) images.set(i.id, i);
    drawImages();
  };
  const loadSnapshots = async () => {
    const [s, t] = await Promise.all([api.get('/v1/snapshots').catch((e) => showError($('#snap-error'), e)), api.get('/v1/templates').catch((e) => showError($('#tpl-error'), e))]);
    if (disposed) return;
    if (s) patchList($('#snap-rows'), s.snapshots, (x) => x.id, snapshotRow);
    if (t) patchList($('#tpl-rows'), t.templates, (x) => x.id, templateRow);
  };
  let timer;
  const off = ctx.onEvent((e) => {
    if (e.type === 'image.progress') {
      // Progress events are frequent: only the pulling row is redrawn, from the tracker.
      if (images.has(e.id)) drawImages();
      else void loadImages();
    } else if (e.type.startsWith('image.')) void loadImages();
    else if (e.type.startsWith('snapshot.') || e.type.startsWith('template.') || e.type === 'vm.deleted') {
      clearTimeout(timer);
      timer = setTimeout(loadSnapshots, 200);
    }
  });
  void loadImages();
  void loadSnapshots();

  const pull = /** @type {HTMLFormElement} */ ($('#pull-img'));
  pull.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(pull, async () => {
      await api.post('/v1/images', { ref: formFields(pull).ref.trim() });
      await loadImages();
    });
  });
  const tpl = /** @type {HTMLFormElement} */ ($('#build-tpl'));
  tpl.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy(tpl, async () => {
      // Builds (a boot and a snapshot) when there is none: the list shows it `building` meanwhile.
      const p = api.post('/v1/templates', { image: formFields(tpl).image.trim() });
      setTimeout(loadSnapshots, 300);
      await p;
      await loadSnapshots();
    });
  });
  const clone = async (body) => {
    try {
      const vm = await api.post('/v1/vms', body);
      setHtml($('#clone-note'), html`<p class="note">clone <b>${vm.name}</b> (${vm.id}) is ${vm.state}: see <a href="#machines">Machines</a>.</p>`);
    } catch (e) {
      showError($('#clone-note'), e);
    }
  };
  root.addEventListener('click', (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target);
    if (t.dataset.clone) void clone({ snapshot: t.dataset.clone });
    else if (t.dataset.cloneTemplate) void clone({ template: t.dataset.cloneTemplate });
    else if (t.dataset.deleteSnapshot) {
      if (t.dataset.armed !== '1') {
        // Confirmation in place: the first click arms the button, the second deletes.
        t.dataset.armed = '1';
        t.textContent = 'confirm delete';
        return;
      }
      api.del(`/v1/snapshots/${encodeURIComponent(t.dataset.deleteSnapshot)}`).then(loadSnapshots, (e) => showError($('#snap-error'), e));
    }
  });
  return () => {
    disposed = true;
    off();
    clearTimeout(timer);
  };
}

// kiln dashboard: a dependency-free client of kilnd's own REST API (the same one the CLI and
// SDK use). Live updates come from /v1/events; nothing here holds state the API doesn't.
const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const ago = (iso) => {
  if (!iso) return '';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};
const bytes = (n) => (n == null ? '' : n > 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${(n / 1e6).toFixed(1)} MB`);

// Asked once per browser session (the tab's sessionStorage), never written to disk by the page.
let token = sessionStorage.getItem('kiln-token') ?? '';

async function api(path, init = {}) {
  const headers = { ...(init.headers ?? {}), ...(token ? { authorization: `Bearer ${token}` } : {}) };
  const res = await fetch(path, { ...init, headers });
  if (res.status === 401) {
    await askToken();
    return api(path, init);
  }
  const type = res.headers.get('content-type') ?? '';
  const body = type.includes('json') ? await res.json() : await res.text();
  if (!res.ok) throw new Error(body?.message ? `${body.code}: ${body.message}` : `HTTP ${res.status}`);
  return body;
}

function askToken() {
  return new Promise((resolve) => {
    const dlg = $('#token-dialog');
    dlg.onclose = () => {
      token = $('#token-input').value.trim();
      sessionStorage.setItem('kiln-token', token);
      resolve();
    };
    dlg.showModal();
  });
}

const state = (s) => `<span class="state-${esc(s)}">${esc(s)}</span>`;

/** Each view: where its rows come from, the columns, and what a click on a row shows. */
const VIEWS = {
  machines: {
    title: 'Machines',
    list: async () => (await api('/v1/vms')).vms,
    columns: [
      ['name', (v) => esc(v.name)],
      ['state', (v) => state(v.state)],
      ['ip', (v) => esc(v.ip ?? '')],
      ['image', (v) => esc(v.image?.name ?? v.image?.id ?? '')],
      ['backend', (v) => esc(`${v.backend ?? ''}/${v.accelerator ?? ''}`)],
      ['created', (v) => esc(ago(v.created_at))],
    ],
    detail: showVm,
  },
  containers: {
    title: 'Containers',
    optional: '/v1/containers',
    list: async () => (await api('/v1/containers?all=1')).containers,
    columns: [
      ['name', (c) => esc(c.name)],
      ['state', (c) => state(c.state)],
      ['image', (c) => esc(c.image)],
      ['ip', (c) => esc(c.ip ?? '')],
      ['exit', (c) => esc(c.exit_code ?? '')],
      ['restarts', (c) => esc(c.restart_count ?? '')],
      ['created', (c) => esc(ago(c.created_at))],
    ],
    // A container is a VM with the same id: its timeline and console are the VM's.
    detail: (c) => showVm({ id: c.id }),
  },
  functions: {
    title: 'Functions',
    optional: '/v1/functions',
    list: async () => (await api('/v1/functions')).functions,
    columns: [
      ['name', (f) => esc(f.name)],
      ['runtime', (f) => esc(f.runtime)],
      ['version', (f) => esc(f.version ?? '')],
      ['state', (f) => state(f.state)],
      ['instances', (f) => esc(f.instances?.length ?? '')],
      ['updated', (f) => esc(ago(f.updated_at))],
    ],
    detail: showFunction,
  },
  images: {
    title: 'Images',
    list: async () => (await api('/v1/images')).images,
    columns: [
      ['name', (i) => esc(i.name)],
      ['state', (i) => state(i.state)],
      ['format', (i) => esc(i.format)],
      ['size', (i) => esc(bytes(i.size_bytes))],
      ['source', (i) => esc(i.source ?? 'import')],
    ],
    detail: (i) => showJson(i.name, i),
  },
  events: { title: 'Events', render: renderEvents },
  metrics: { title: 'Metrics', render: renderMetrics },
};

let current = 'machines';
let refreshTimer = null;

async function route() {
  current = location.hash.slice(1) || 'machines';
  if (!VIEWS[current]) current = 'machines';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === current);
  $('#detail').hidden = true;
  await render();
}

async function render() {
  const view = VIEWS[current];
  const el = $('#view');
  try {
    if (view.render) return await view.render(el);
    const rows = await view.list();
    el.innerHTML = `<h2>${esc(view.title)} <span class="muted">${rows.length}</span></h2>
      <table><thead><tr>${view.columns.map(([h]) => `<th>${esc(h)}</th>`).join('')}</tr></thead>
      <tbody>${rows.map((r, i) => `<tr class="row" data-i="${i}">${view.columns.map(([, f]) => `<td>${f(r)}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
    for (const tr of el.querySelectorAll('tr.row')) tr.onclick = () => view.detail(rows[Number(tr.dataset.i)]);
  } catch (e) {
    el.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function openDetail(html) {
  const d = $('#detail');
  d.hidden = false;
  d.innerHTML = html;
  return d;
}

function timelineTable(phases) {
  if (!phases?.length) return '<p class="muted">no timeline</p>';
  const max = Math.max(...phases.map((p) => p.duration_ms ?? 0), 1);
  return `<table class="timeline">${phases.map((p) => `<tr><td>${esc(p.phase)}</td><td>${p.duration_ms == null ? '…' : `${p.duration_ms} ms`}</td>
    <td><div class="bar" style="width:${Math.max(1, ((p.duration_ms ?? 0) / max) * 100)}%"></div></td></tr>`).join('')}</table>`;
}

async function showVm(v) {
  const vm = await api(`/v1/vms/${encodeURIComponent(v.id)}`);
  const d = openDetail(`<h3>${esc(vm.name)} ${state(vm.state)}</h3>
    <p class="muted">${esc(vm.id)} · ${esc(vm.vcpus)} vCPU · ${esc(vm.memory_mib)} MiB · ${esc(vm.ip ?? 'no network')}</p>
    <p>${['stop', 'start', 'pause', 'resume'].map((op) => `<button data-op="${op}">${op}</button>`).join('')}<button data-op="delete">delete</button></p>
    ${vm.state_reason ? `<p class="error">${esc(vm.state_reason)}</p>` : ''}
    <h4>Provision timeline</h4>${timelineTable(vm.timeline)}
    <h4>Console</h4><pre id="console">loading…</pre>`);
  for (const b of d.querySelectorAll('button[data-op]')) {
    b.onclick = async () => {
      try {
        if (b.dataset.op === 'delete') await api(`/v1/vms/${vm.id}`, { method: 'DELETE' });
        else await api(`/v1/vms/${vm.id}/${b.dataset.op}`, { method: 'POST' });
        await render();
        if (b.dataset.op !== 'delete') await showVm(vm);
        else d.hidden = true;
      } catch (e) {
        alert(e.message);
      }
    };
  }
  const logs = await api(`/v1/vms/${vm.id}/logs`).catch((e) => e.message);
  $('#console').textContent = String(logs).slice(-20000) || '(empty)';
}

async function showFunction(f) {
  const inv = await api(`/v1/functions/${encodeURIComponent(f.name)}/invocations`).catch(() => []);
  const list = inv.invocations ?? [];
  const { code, ...config } = f;
  openDetail(`<h3>${esc(f.name)} <span class="muted">v${esc(f.version)}</span></h3><pre>${esc(JSON.stringify(config, null, 2))}</pre>
    <h4>Recent invocations</h4><table><tr><th>status</th><th>ms</th><th>guest ms</th><th>start</th><th>instance</th></tr>
    ${list.slice(0, 50).map((i) => `<tr><td>${state(i.status)}</td><td>${esc(i.duration_ms)}</td><td>${esc(i.guest_ms ?? '')}</td>
      <td>${esc(i.cold ? `cold (${i.source ?? '?'}${i.instance_start ? `, ${i.instance_start}` : ''})` : 'warm')}</td><td>${esc(i.instance ?? '')}</td></tr>`).join('')}</table>`);
}

function showJson(title, obj, vmId) {
  const d = openDetail(`<h3>${esc(title)}</h3>${vmId ? `<p><a href="#machines" data-vm="${esc(vmId)}">its VM</a></p>` : ''}<pre>${esc(JSON.stringify(obj, null, 2))}</pre>`);
  const a = d.querySelector('a[data-vm]');
  if (a) a.onclick = () => setTimeout(() => showVm({ id: vmId }), 0);
}

const eventLog = [];
function renderEvents(el) {
  el.innerHTML = `<h2>Events <span class="muted">live</span></h2><table><thead><tr><th>time</th><th>type</th><th>vm</th><th>data</th></tr></thead><tbody id="events"></tbody></table>`;
  drawEvents();
}
function drawEvents() {
  const tb = $('#events');
  if (!tb) return;
  tb.innerHTML = eventLog.slice(-200).reverse().map((e) => {
    const { seq, ts, type, vm, ...rest } = e;
    return `<tr><td>${esc(ts?.slice(11, 23))}</td><td>${esc(type)}</td><td>${esc(vm ?? '')}</td><td class="muted">${esc(JSON.stringify(rest)).slice(0, 160)}</td></tr>`;
  }).join('');
}

async function renderMetrics(el) {
  const text = await api('/metrics');
  const rows = String(text).split('\n').filter((l) => l && !l.startsWith('#') && l.startsWith('kiln_') && !l.includes('_bucket{'));
  el.innerHTML = `<h2>Metrics <span class="muted">/metrics</span></h2><table class="metrics">${rows.map((l) => {
    const i = l.lastIndexOf(' ');
    return `<tr><td>${esc(l.slice(0, i))}</td><td>${esc(l.slice(i + 1))}</td></tr>`;
  }).join('')}</table>`;
}

/** /v1/events over fetch (EventSource cannot send the bearer token). */
async function followEvents() {
  for (;;) {
    try {
      const res = await fetch('/v1/events', { headers: token ? { authorization: `Bearer ${token}` } : {} });
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = chunk.split('\n').find((l) => l.startsWith('data: '));
          if (!data) continue;
          eventLog.push(JSON.parse(data.slice(6)));
          if (eventLog.length > 1000) eventLog.splice(0, 500);
          if (current === 'events') drawEvents();
          else if (!VIEWS[current].render) {
            clearTimeout(refreshTimer);
            refreshTimer = setTimeout(render, 300);
          }
        }
      }
    } catch {
      /* kilnd restarting: retry below */
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function start() {
  const health = await api('/healthz');
  $('#host').textContent = `kiln ${health.version} · ${health.backend}/${health.accelerator} · kernel ${health.kernel}`;
  // Views for features this kilnd has (an older daemon may lack some) appear only if they answer.
  const present = await Promise.all(Object.entries(VIEWS).map(async ([k, v]) => [k, !v.optional || (await api(v.optional).then(() => true, () => false))]));
  $('#nav').innerHTML = present.filter(([, ok]) => ok).map(([k]) => `<a href="#${k}" data-view="${k}">${esc(VIEWS[k].title)}</a>`).join('');
  window.onhashchange = route;
  await route();
  void followEvents();
}

void start();

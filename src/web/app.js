// kiln dashboard entry point: the token, the one event stream every page listens to, the
// charts' data (gathered from start, whatever page is shown), and hash routing between pages.
// Pages build their DOM once and then patch it; nothing here redraws a page on an event.
import { Api } from './lib/api.js';
import { EventStats, RateSeries, parseProm, sumOf } from './lib/metrics.js';
import { PullProgress } from './views/images.js';
import { mountContainers } from './pages/containers.js';
import { mountEvents } from './pages/events.js';
import { mountFunctions } from './pages/functions.js';
import { mountImages } from './pages/images.js';
import { mountMachines } from './pages/machines.js';

const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (document.querySelector(s));

/** @type {Promise<string>|null} one token question at a time, however many requests got a 401 */
let asking = null;
function askToken(reason) {
  asking ??= new Promise((resolve) => {
    const dlg = /** @type {HTMLDialogElement} */ ($('#token-dialog'));
    $('#token-reason').textContent = reason;
    const input = /** @type {HTMLInputElement} */ ($('#token-input'));
    input.value = '';
    dlg.onclose = () => {
      asking = null;
      resolve(input.value.trim());
    };
    dlg.showModal();
  });
  return asking;
}

const api = new Api({ askToken });
/** @type {Set<(e: any) => void>} */
const listeners = new Set();
/** @type {Set<() => void>} */
const tickers = new Set();
const recent = [];
const stats = new EventStats();
const invokes = new RateSeries();
const pulls = new PullProgress();
const ctx = {
  api,
  recent,
  stats,
  invokes,
  pulls,
  onEvent(f) {
    listeners.add(f);
    return () => listeners.delete(f);
  },
  onTick(f) {
    tickers.add(f);
    return () => tickers.delete(f);
  },
  go(hash) {
    location.hash = hash;
  },
};

function dispatch(e) {
  recent.push(e);
  if (recent.length > 1000) recent.splice(0, 500);
  stats.add(e);
  pulls.add(e);
  for (const f of listeners) {
    try {
      f(e);
    } catch (err) {
      console.error('event handler', err);
    }
  }
}

/** Invocations per second from kilnd's counter, sampled every 2 s from the start. */
async function sampleMetrics() {
  const text = await api.get('/metrics').catch(() => null);
  if (typeof text === 'string') invokes.push(Date.now() / 1000, sumOf(parseProm(text), 'kiln_function_invoke_seconds_count'));
  for (const f of tickers) f();
}

const PAGES = {
  machines: ['Machines', mountMachines],
  containers: ['Containers', mountContainers],
  functions: ['Functions', mountFunctions],
  images: ['Images', mountImages],
  overview: ['Overview', (root, c) => import('./pages/overview.js').then((m) => m.mountOverview(root, c))],
  events: ['Events', mountEvents],
};

/** @type {(() => void) | null} */
let unmount = null;
async function route() {
  const name = PAGES[location.hash.slice(1)] ? location.hash.slice(1) : 'machines';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', /** @type {HTMLElement} */ (a).dataset.page === name);
  unmount?.();
  unmount = null;
  // Each mount gets a root of its own: work an unmounted page still has in flight (a request
  // that answers late, a timer) then finds its own, detached, elements instead of null or the
  // next page's.
  const root = document.createElement('div');
  root.className = `page-root page-${name}`;
  $('#page').replaceChildren(root);
  const mounted = await PAGES[name][1](root, ctx);
  unmount = typeof mounted === 'function' ? mounted : null;
}

async function start() {
  $('#nav').innerHTML = Object.entries(PAGES).map(([k, [title]]) => `<a href="#${k}" data-page="${k}">${title}</a>`).join('');
  const health = await api.get('/healthz');
  $('#host').textContent = `kiln ${health.version} · ${health.backend}/${health.accelerator} · kernel ${health.kernel}${health.auth === 'none' ? ' · no auth' : ''}`;
  if (health.auth !== 'none' && !api.token) api.token = await askToken('this kilnd needs its API token');
  const events = new AbortController();
  void api.follow(dispatch, (s) => {
    $('#live').textContent = s === 'live' ? '● live' : '○ reconnecting';
    $('#live').className = s === 'live' ? 'live ok' : 'live bad';
  }, events.signal);
  window.addEventListener('hashchange', route);
  await route();
  void sampleMetrics();
  setInterval(sampleMetrics, 2000);
  document.body.dataset.ready = '1';
}

start().catch((e) => {
  $('#page').textContent = `kiln dashboard failed to start: ${e.code ?? ''} ${e.message}`;
});

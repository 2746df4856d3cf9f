// Live charts (uPlot): VM creates per second and create→ready latency from the event feed,
// function invocations per second from /metrics; host capacity from /healthz.
import uPlot from '/ui/vendor/uplot.mjs';
import { html } from '../lib/html.js';
import { setHtml } from '../lib/dom.js';

/**
 * @param {HTMLElement} root
 * @param {{api: import('../lib/api.js').Api, onEvent: (f: (e: any) => void) => () => void, stats: import('../lib/metrics.js').EventStats, invokes: import('../lib/metrics.js').RateSeries, onTick: (f: () => void) => () => void}} ctx
 */
export function mountOverview(root, ctx) {
  root.innerHTML = String(html`<section class="page wide"><h2>Overview</h2><div id="capacity"></div>
    <div class="charts"><figure><figcaption>VM creates / s</figcaption><div id="ch-creates"></div></figure>
    <figure><figcaption>create → ready latency, per VM</figcaption><div id="ch-ready"></div></figure>
    <figure><figcaption>function invocations / s</figcaption><div id="ch-invokes"></div></figure></div></section>`);
  const $ = (/** @type {string} */ s) => /** @type {HTMLElement} */ (root.querySelector(s));
  const width = () => Math.max(280, Math.min(520, (root.clientWidth - 48) / 3));
  /** @param {(v: number) => string} fmt axis and legend values */
  const chart = (el, label, color, fmt, points = false) => new uPlot({
    width: width(), height: 180, legend: { show: true },
    scales: { x: { time: true } },
    series: [{}, { label, stroke: color, width: 2, fill: `${color}22`, points: { show: points }, value: (_u, v) => (v == null ? '--' : fmt(v)), ...(points ? { paths: () => null } : {}) }],
    axes: [{}, { size: 60, values: (_u, vals) => vals.map(fmt) }],
  }, [[], []], el);
  const rate = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(2).replace(/\.?0+$/, ''));
  const creates = chart($('#ch-creates'), 'creates/s', '#c2410c', rate);
  const ready = chart($('#ch-ready'), 'ready after', '#15803d', (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`), true);
  const invokes = chart($('#ch-invokes'), 'calls/s', '#1d4ed8', rate);
  const draw = () => {
    creates.setData(ctx.stats.createsPerSecond(Date.now() / 1000));
    ready.setData([ctx.stats.ready.map((r) => r.t), ctx.stats.ready.map((r) => r.ms)]);
    invokes.setData([ctx.invokes.t.slice(), ctx.invokes.v.slice()]);
  };
  const capacity = async () => {
    const h = await ctx.api.get('/healthz').catch(() => null);
    if (!h?.capacity) return;
    const c = h.capacity;
    setHtml($('#capacity'), html`<p class="muted">capacity: ${c.vcpus?.committed ?? '?'} / ${c.vcpus?.capacity ?? '?'} vCPUs · ${c.memory_mib?.committed ?? '?'} / ${c.memory_mib?.capacity ?? '?'} MiB committed · ${h.vms} VMs</p>`);
  };
  void capacity();
  draw();
  const offTick = ctx.onTick(() => {
    draw();
    void capacity();
  });
  const off = ctx.onEvent((e) => {
    if (e.type === 'vm.created' || e.type === 'vm.state') draw();
  });
  const onResize = () => {
    for (const u of [creates, ready, invokes]) u.setSize({ width: width(), height: 180 });
  };
  window.addEventListener('resize', onResize);
  return () => {
    off();
    offTick();
    window.removeEventListener('resize', onResize);
    for (const u of [creates, ready, invokes]) u.destroy();
  };
}

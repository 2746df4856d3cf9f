// Prometheus text → numbers for the live charts (pure: tested in Node).

/**
 * Parses the exposition format's sample lines; comments and malformed lines are skipped.
 * @param {string} text
 * @returns {{name: string, labels: Record<string, string>, value: number}[]}
 */
export function parseProm(text) {
  const out = [];
  for (const line of String(text ?? '').split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    /** @type {Record<string, string>} */
    const labels = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const value = Number(m[3]);
    if (!Number.isNaN(value)) out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Sum of a metric's samples whose labels include `match`. */
export function sumOf(samples, name, match = {}) {
  return samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

/**
 * A rolling time series of a counter's rate: push (time, counter) samples, get per-second
 * rates. A counter that went down (kilnd restarted) restarts the rate instead of going negative.
 */
export class RateSeries {
  constructor(keep = 120) {
    this.keep = keep;
    /** @type {number[]} */ this.t = [];
    /** @type {number[]} */ this.v = [];
    /** @type {{t: number, c: number} | null} */ this.last = null;
  }
  /** @param {number} tSec @param {number} counter */
  push(tSec, counter) {
    const prev = this.last;
    this.last = { t: tSec, c: counter };
    if (!prev || tSec <= prev.t) return;
    const rate = counter >= prev.c ? (counter - prev.c) / (tSec - prev.t) : 0;
    this.add(tSec, rate);
  }
  /** @param {number} tSec @param {number} value */
  add(tSec, value) {
    this.t.push(tSec);
    this.v.push(value);
    if (this.t.length > this.keep) {
      this.t.shift();
      this.v.shift();
    }
  }
}

/**
 * Events → chart data: VM creates per time bucket, and create→ready latency per VM (from the
 * vm.created and vm.state(to=ready) events' own timestamps, so replayed history counts too).
 */
export class EventStats {
  constructor(bucketSec = 5, keep = 120) {
    this.bucketSec = bucketSec;
    this.keep = keep;
    /** @type {Map<number, number>} bucket start (s) → creates */ this.creates = new Map();
    /** @type {Map<string, number>} vm → created at (ms) */ this.createdAt = new Map();
    /** @type {{t: number, ms: number, vm: string}[]} */ this.ready = [];
  }
  /** @param {{type: string, ts: string, vm?: string|null, to?: string}} e */
  add(e) {
    const t = Date.parse(e.ts);
    if (Number.isNaN(t)) return;
    if (e.type === 'vm.created' && e.vm) {
      const b = Math.floor(t / 1000 / this.bucketSec) * this.bucketSec;
      this.creates.set(b, (this.creates.get(b) ?? 0) + 1);
      this.createdAt.set(e.vm, t);
      if (this.creates.size > this.keep) this.creates.delete(Math.min(...this.creates.keys()));
    } else if (e.type === 'vm.state' && e.to === 'ready' && e.vm && this.createdAt.has(e.vm)) {
      // The first ready after a create is its provision latency; later ones (resume) are not.
      this.ready.push({ t: t / 1000, ms: t - /** @type {number} */ (this.createdAt.get(e.vm)), vm: e.vm });
      this.createdAt.delete(e.vm);
      if (this.ready.length > this.keep) this.ready.shift();
    }
  }
  /** Creates per second over the last `n` buckets up to `nowSec`, zeros included. */
  createsPerSecond(nowSec, n = 24) {
    const end = Math.floor(nowSec / this.bucketSec) * this.bucketSec;
    const t = [];
    const v = [];
    for (let b = end - (n - 1) * this.bucketSec; b <= end; b += this.bucketSec) {
      t.push(b);
      v.push((this.creates.get(b) ?? 0) / this.bucketSec);
    }
    return [t, v];
  }
}

// Issue 13, acceptance 5: a guest writing forged `@kiln:` markers and output as fast as it can
// (root in the guest writes straight to the serial console, past kiln-init's escaping) for
// 60 s. kilnd's /healthz stays fast (p99 < 100 ms, sampled every ~100 ms), another VM's exec
// keeps working, the events table stays under its per-VM cap and the console log under its
// size cap (both read from disk), and kilnd's memory does not grow with the flood.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';

const skip = BACKEND_SKIP ?? false;
const FLOOD_MS = 60_000;
const CONSOLE_MAX = 1024 * 1024;
const KEEP_PER_VM = 300;
let d: TestDaemon;

// Three writers: forged warn markers (each would be an event and a log line), forged ready
// markers, and plain output through the workload's stdout.
const FLOOD = [
  'l="@kiln:warn stage=flood msg=forged_$(head -c 200 /dev/zero | tr "\\0" x)"',
  'c=/dev/console; [ -w $c ] || c=/dev/ttyS0',
  'yes "$l" > $c &',
  'yes "@kiln:ready forged=1" > $c &',
  'echo flood-started',
  'exec yes "plain output from the workload, as fast as it goes"',
].join('\n');

before(async () => {
  if (skip) return;
  d = await startKilnd({
    env: { KILN_CONSOLE_LOG_MAX_BYTES: String(CONSOLE_MAX), KILN_EVENTS_KEEP_PER_VM: String(KEEP_PER_VM), KILN_GUEST_EVENTS_PER_S: '5', KILN_GUEST_EVENTS_BURST: '20' },
  });
});
after(() => d?.dispose());

async function rssKb(pid: number): Promise<number> {
  const m = /VmRSS:\s+(\d+)/.exec(await fs.readFile(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))]!;

test('a guest flooding its console for 60 s cannot slow kilnd, starve another VM or grow the DB and log past their caps', { skip, timeout: 600_000 }, async () => {
  const victim = await d.client.createVm({ name: 'victim', cmd: ['/bin/sleep', '100000'] }, { wait: true });
  const flood = await d.client.createVm({ name: 'flood', cmd: ['/bin/sh', '-c', FLOOD] }, { wait: true });
  const consoleLog = path.join(d.stateDir, 'vms', flood.id, 'console.log');
  const rssBefore = await rssKb(d.proc.pid!);

  const latencies: number[] = [];
  const execs: { ok: boolean; ms: number; err?: string }[] = [];
  let maxOnDisk = 0;
  const end = Date.now() + FLOOD_MS;
  const sampleHealth = (async () => {
    while (Date.now() < end) {
      const t0 = performance.now();
      const r = await fetch(`${d.url}/healthz`);
      await r.arrayBuffer();
      latencies.push(performance.now() - t0);
      assert.equal(r.status, 200);
      await new Promise((res) => setTimeout(res, 100));
    }
  })();
  const victimExecs = (async () => {
    while (Date.now() < end) {
      const t0 = performance.now();
      try {
        const r = await d.client.exec(victim.id, { cmd: ['echo', 'still here'], timeoutMs: 20_000 });
        execs.push({ ok: r.exit_code === 0 && r.stdout === 'still here\n', ms: performance.now() - t0 });
      } catch (e) {
        execs.push({ ok: false, ms: performance.now() - t0, err: String(e) });
      }
      await new Promise((res) => setTimeout(res, 2000));
    }
  })();
  const watchDisk = (async () => {
    while (Date.now() < end) {
      const size = async (p: string) => (await fs.stat(p).catch(() => null))?.size ?? 0;
      maxOnDisk = Math.max(maxOnDisk, (await size(consoleLog)) + (await size(`${consoleLog}.1`)));
      await new Promise((res) => setTimeout(res, 250));
    }
  })();
  await Promise.all([sampleHealth, victimExecs, watchDisk]);
  const rssAfter = await rssKb(d.proc.pid!);

  assert.equal((await d.client.getVm(flood.id)).state, 'ready', 'the flooding VM is still up (the flood really ran)');
  const db = new Database(path.join(d.stateDir, 'kiln.db'), { readonly: true });
  let floodEvents: number;
  let rateLimited: { data: string }[];
  try {
    floodEvents = (db.prepare('SELECT COUNT(*) AS n FROM events WHERE vm_id = ?').get(flood.id) as { n: number }).n;
    rateLimited = db.prepare(`SELECT data FROM events WHERE vm_id = ? AND data LIKE '%rate_limited%'`).all(flood.id) as { data: string }[];
  } finally {
    db.close();
  }
  const dropped = rateLimited.reduce((a, r) => a + Number(JSON.parse(r.data).dropped), 0);
  const summary = {
    healthz: { samples: latencies.length, p50: latencies.sort((a, b) => a - b)[latencies.length >> 1], p99: p99(latencies), max: Math.max(...latencies) },
    execs: { n: execs.length, failed: execs.filter((e) => !e.ok), maxMs: Math.max(...execs.map((e) => e.ms)) },
    floodEvents, rateLimitedNotices: rateLimited.length, dropped, maxConsoleOnDisk: maxOnDisk, rssKb: { before: rssBefore, after: rssAfter },
  };
  console.log(JSON.stringify(summary));

  assert.ok(dropped > 1000, `the flood tripped the rate limit (dropped ${dropped}): ${JSON.stringify(summary)}`);
  assert.ok(rateLimited.length <= FLOOD_MS / 10_000 + 2, `one rate_limited notice per 10 s at most, got ${rateLimited.length}`);
  assert.ok(floodEvents <= KEEP_PER_VM, `events of the flooding VM: ${floodEvents} > ${KEEP_PER_VM}`);
  assert.ok(await fs.stat(`${consoleLog}.1`).then(() => true, () => false), 'the console log rotated (the flood wrote past the cap)');
  assert.ok(maxOnDisk <= CONSOLE_MAX + 256 * 1024, `console log on disk reached ${maxOnDisk} B (cap ${CONSOLE_MAX})`);
  assert.ok(latencies.length >= 300, `healthz samples: ${latencies.length}`);
  assert.ok(p99(latencies) < 100, `healthz p99 ${p99(latencies).toFixed(1)} ms`);
  assert.ok(execs.length >= 10 && execs.every((e) => e.ok), `victim execs: ${JSON.stringify(summary.execs)}`);
  assert.ok(rssAfter - rssBefore < 100 * 1024, `kilnd RSS grew ${rssAfter - rssBefore} kB during the flood`);
});

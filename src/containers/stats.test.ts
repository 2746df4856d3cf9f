import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { StatsMessage } from '../guest/agent/messages.ts';
import { statsFromSamples } from './stats.ts';

const sample = (over: { user: number; idle: number; wl: number; pid?: number; uptime: number }): StatsMessage => ({
  type: 'stats', uptime_ms: over.uptime, clk_tck: 100, ncpu: 2,
  cpu: { user: over.user, nice: 0, system: 0, idle: over.idle, iowait: 0, irq: 0, softirq: 0, steal: 0 },
  mem: { total_kb: 100_000, available_kb: 60_000, free_kb: 50_000 },
  workload: { pid: over.pid ?? 50, running: true, utime: over.wl, stime: 0, rss_kb: 1000 },
});

test('CPU as % of one CPU from tick deltas; memory from the second sample', () => {
  // 200 ticks elapsed over 2 CPUs (1 s); the workload used 100 of them: one full CPU.
  const s = statsFromSamples(sample({ user: 0, idle: 0, wl: 0, uptime: 0 }), sample({ user: 150, idle: 50, wl: 100, uptime: 1000 }));
  assert.equal(s.cpu_percent, 100);
  assert.equal(s.guest_cpu_percent, 150);
  assert.equal(s.memory_usage_bytes, 40_000 * 1024);
  assert.equal(s.memory_limit_bytes, 100_000 * 1024);
  assert.equal(s.workload_rss_bytes, 1000 * 1024);
  assert.equal(s.interval_ms, 1000);
});

test('a restarted workload (other pid) or no elapsed ticks gives 0, never negative', () => {
  assert.equal(statsFromSamples(sample({ user: 0, idle: 0, wl: 500, uptime: 0 }), sample({ user: 10, idle: 10, wl: 1, pid: 51, uptime: 5 })).cpu_percent, 0);
  assert.equal(statsFromSamples(sample({ user: 5, idle: 5, wl: 0, uptime: 0 }), sample({ user: 5, idle: 5, wl: 0, uptime: 0 })).cpu_percent, 0);
});

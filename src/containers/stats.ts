// `kiln stats`: two counter samples from the guest agent turned into rates, the way
// `docker stats` computes them (CPU % of one CPU, so a busy 2-vCPU guest shows up to 200 %).
import type { StatsMessage } from '../guest/agent/messages.ts';

export interface ContainerStatsValues {
  /** The workload (its process and reaped children), % of one CPU. */
  cpu_percent: number;
  /** Everything in the guest (workload, kiln-init, kernel), % of one CPU. */
  guest_cpu_percent: number;
  vcpus: number;
  /** Guest memory in use (total − available). */
  memory_usage_bytes: number;
  memory_limit_bytes: number;
  /** Resident set of the workload's main process. */
  workload_rss_bytes: number;
  workload_running: boolean;
  interval_ms: number;
}

const totalTicks = (s: StatsMessage) => Object.values(s.cpu).reduce((a, b) => a + b, 0);
const busyTicks = (s: StatsMessage) => totalTicks(s) - s.cpu.idle - s.cpu.iowait;
const round = (x: number) => Math.round(x * 100) / 100;

export function statsFromSamples(a: StatsMessage, b: StatsMessage): ContainerStatsValues {
  const total = Math.max(0, totalTicks(b) - totalTicks(a));
  const busy = Math.max(0, busyTicks(b) - busyTicks(a));
  // A pid that changed between samples (restart) has unrelated counters.
  const sameWorkload = a.workload.pid === b.workload.pid && b.workload.running;
  const work = sameWorkload ? Math.max(0, b.workload.utime + b.workload.stime - a.workload.utime - a.workload.stime) : 0;
  const share = (ticks: number) => (total > 0 ? round((ticks / total) * b.ncpu * 100) : 0);
  const kb = (n: number) => Math.max(0, n) * 1024;
  return {
    cpu_percent: share(work),
    guest_cpu_percent: share(busy),
    vcpus: b.ncpu,
    memory_usage_bytes: kb(b.mem.total_kb - b.mem.available_kb),
    memory_limit_bytes: kb(b.mem.total_kb),
    workload_rss_bytes: kb(b.workload.rss_kb),
    workload_running: b.workload.running,
    interval_ms: b.uptime_ms - a.uptime_ms,
  };
}

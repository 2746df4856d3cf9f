// The per-VM cost of kiln's host network setup, without booting anything: NetworkManager's
// plug() (tap + permanent neighbour entry + the nftables render, which holds the new tap to
// its lease and egress policy before its guest can send) and unplug() + sync(), on a bridge
// and a state database made here, with N other leased VMs in the tables. Run as root:
//   node --import tsx bench/network-rules.ts [iterations] [other VMs...]
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
// KILN_BENCH_SRC: another checkout's src/ (to measure the same steps before a change).
const SRC = process.env.KILN_BENCH_SRC ?? '../src';
const { NetworkManager } = (await import(`${SRC}/net/network-manager.ts`)) as typeof import('../src/net/network-manager.ts');
const { SqliteStore } = (await import(`${SRC}/store/sqlite-store.ts`)) as typeof import('../src/store/sqlite-store.ts');
import type { VmRecord } from '../src/store/store.ts';
import { quantile } from './stats.ts';

const iterations = Number(process.argv[2] ?? 30);
const others = process.argv.slice(3).map(Number);
const sizes = others.length ? others : [0, 10, 100];

function vm(id: string): VmRecord {
  const now = Date.now();
  return {
    id, name: id, state: 'ready', stateReason: null, imageId: 'img', vcpus: 1, memoryMib: 128, kernelArgs: [], cmd: null, env: {},
    network: 'bridge', ip: null, ports: [], readiness: 'auto', agentToken: null, agent: null, health: 'unknown', healthReason: null,
    backend: 'qemu', accelerator: 'tcg', pid: null, bootCount: 1, consoleOffset: 0, exitCode: null, volumes: [], createdAt: now, updatedAt: now,
  };
}

for (const n of sizes) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-netbench-'));
  const store = new SqliteStore(path.join(dir, 'kiln.db'));
  const bridge = `kb${randomBytes(3).toString('hex')}`;
  const net = new NetworkManager({ bridge, cidr: `10.${200 + Math.floor(Math.random() * 50)}.0.0/16`, agentPort: 18081 }, { store, log: pino({ level: 'silent' }) });
  try {
    await store.insertImage({
      id: 'img', name: 'img', digest: 'sha256:0', format: 'squashfs', path: '/nonexistent', sizeBytes: 0, config: {} as never, createdAt: Date.now(),
      state: 'ready', source: null, manifestDigest: null, layers: [], builder: null,
    });
    await net.init();
    (net as Partial<InstanceType<typeof NetworkManager>>).setAgentPort?.(18081);
    for (let i = 0; i < n; i++) {
      const other = vm(`vm-${randomBytes(5).toString('hex')}`);
      other.state = 'stopped';
      await store.insertVm(other);
      await net.lease(other.id);
    }
    await net.sync();
    const plug: number[] = [];
    const unplug: number[] = [];
    const render: number[] = [];
    for (let i = 0; i < iterations; i++) {
      const rec = vm(`vm-${randomBytes(5).toString('hex')}`);
      await store.insertVm(rec);
      rec.ip = (await net.lease(rec.id))!.ip;
      let t = performance.now();
      await net.plug(rec);
      plug.push(performance.now() - t);
      t = performance.now();
      await net.sync();
      render.push(performance.now() - t);
      t = performance.now();
      await net.unplug(rec.id);
      await store.deleteVm(rec.id);
      await net.sync();
      unplug.push(performance.now() - t);
    }
    const fmt = (xs: number[]) => {
      return `p50 ${quantile(xs, 0.5).toFixed(1)} ms, p95 ${quantile(xs, 0.95).toFixed(1)} ms`;
    };
    console.log(`other leased VMs ${n}: plug ${fmt(plug)} | sync alone ${fmt(render)} | unplug+sync ${fmt(unplug)} (${iterations} runs)`);
  } finally {
    await net.teardown().catch(() => {});
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

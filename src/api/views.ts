// Store records → API JSON (snake_case, ISO timestamps).
import type { Daemon } from '../daemon.ts';
import fs from 'node:fs/promises';
import type { ClassicVm, ImageRecord, VmRecord } from '../store/store.ts';
import { macFor } from '../net/ipv4.ts';
import { DEFAULT_EGRESS, egressView } from '../net/egress.ts';
import { vmKind } from '../vm/labels.ts';
import { phaseView } from '../vm/timeline.ts';
import type { Image, Vm } from './schemas.ts';

const iso = (ms: number) => new Date(ms).toISOString();

export async function vmView(daemon: Daemon, vm: VmRecord): Promise<Vm> {
  const [image, phases] = await Promise.all([daemon.store.getImage(vm.imageId), daemon.store.listPhases(vm.id, vm.bootCount)]);
  return {
    id: vm.id,
    name: vm.name,
    kind: vmKind(vm),
    labels: vm.labels ?? {},
    state: vm.state,
    state_reason: vm.stateReason,
    image: { id: vm.imageId, name: image?.name ?? null },
    vcpus: vm.vcpus,
    memory_mib: vm.memoryMib,
    kernel_args: vm.kernelArgs,
    cmd: vm.cmd,
    env: vm.env,
    network: vm.network,
    egress: vm.network === 'bridge' ? egressView(vm.egress ?? DEFAULT_EGRESS) : 'none',
    ip: vm.ip,
    mac: vm.ip ? macFor(vm.ip) : null,
    ports: vm.ports.map((p) => ({ host: p.hostPort, guest: p.guestPort, proto: p.proto })),
    readiness: vm.readiness,
    agent: vm.agent && {
      channel: vm.agent.channel,
      readiness: vm.agent.readiness,
      version: vm.agent.version,
      latency_ms: vm.agent.latencyMs,
      clock_error_ms: vm.agent.clockErrorMs,
    },
    health: vm.health,
    health_reason: vm.healthReason,
    backend: vm.backend,
    accelerator: vm.accelerator,
    pid: vm.pid,
    boot_count: vm.bootCount,
    exit_code: vm.exitCode,
    created_at: iso(vm.createdAt),
    updated_at: iso(vm.updatedAt),
    timeline: phases.map(phaseView),
    volumes: vm.volumes.map((v) => ({ volume: v.volumeId ?? null, host_path: v.hostPath ?? null, target: v.target, read_only: v.readOnly })),
    classic: vm.classic ? await classicView(vm.classic) : null,
  };
}

async function classicView(c: ClassicVm): Promise<NonNullable<Vm['classic']>> {
  const st = await fs.stat(c.disk.path).catch(() => null);
  return {
    hostname: c.hostname,
    ssh_authorized_keys: c.sshAuthorizedKeys.length,
    user_data: c.userData !== null,
    disk: { size_bytes: c.disk.sizeBytes, allocated_bytes: st ? st.blocks * 512 : null, strategy: c.disk.strategy, clone_ms: c.disk.cloneMs },
  };
}

export function imageView(img: ImageRecord): Image {
  return {
    id: img.id,
    name: img.name,
    digest: img.digest,
    format: img.format,
    size_bytes: img.sizeBytes,
    config: img.config,
    created_at: iso(img.createdAt),
    state: img.state,
    source: img.source,
    manifest_digest: img.manifestDigest,
    layers: img.layers,
    builder: img.builder,
  };
}

// Row codecs shared by both stores (sqlite-store.ts, pg/): one encoding of every record, so
// SQLite and PostgreSQL rows mean the same thing and the conformance suite tests one mapping.
// JSON-shaped fields are JSON text in both (PostgreSQL's jsonb columns are read back as text:
// pg/pool.ts), booleans are 1/0 on the way in (PostgreSQL's boolean accepts '1'/'0') and
// 1/0 or true/false on the way out.
import type { ContainerRecord, ImageCopy, ImageRecord, NodeRecord, SnapshotRecord, TemplateRecord, VmRecord, VmState, VolumeRecord } from './store.ts';

export type Row = Record<string, unknown>;

export function vmFromRow(r: Row): VmRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    state: r.state as VmRecord['state'],
    stateReason: (r.state_reason as string | null) ?? null,
    imageId: r.image_id as string,
    vcpus: r.vcpus as number,
    memoryMib: r.memory_mib as number,
    kernelArgs: JSON.parse(r.kernel_args as string),
    cmd: r.cmd === null ? null : JSON.parse(r.cmd as string),
    env: JSON.parse(r.env as string),
    network: r.network as VmRecord['network'],
    ip: (r.ip as string | null) ?? null,
    ports: JSON.parse(r.ports as string),
    readiness: r.readiness as VmRecord['readiness'],
    agentToken: (r.agent_token as string | null) ?? null,
    agent: r.agent === null || r.agent === undefined ? null : JSON.parse(r.agent as string),
    health: r.health as VmRecord['health'],
    healthReason: (r.health_reason as string | null) ?? null,
    backend: r.backend as VmRecord['backend'],
    accelerator: r.accelerator as VmRecord['accelerator'],
    pid: (r.pid as number | null) ?? null,
    bootCount: r.boot_count as number,
    consoleOffset: r.console_offset as number,
    exitCode: (r.exit_code as number | null) ?? null,
    volumes: JSON.parse((r.volumes as string | undefined) ?? '[]'),
    process: r.process === null || r.process === undefined ? null : JSON.parse(r.process as string),
    classic: r.classic === null || r.classic === undefined ? null : JSON.parse(r.classic as string),
    egress: r.egress === null || r.egress === undefined ? null : JSON.parse(r.egress as string),
    nodeId: (r.node_id as string | null | undefined) ?? null,
    labels: r.labels === null || r.labels === undefined ? {} : JSON.parse(r.labels as string),
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
  };
}

export function vmToRow(vm: VmRecord): Row {
  return {
    id: vm.id,
    name: vm.name,
    state: vm.state,
    state_reason: vm.stateReason,
    image_id: vm.imageId,
    vcpus: vm.vcpus,
    memory_mib: vm.memoryMib,
    kernel_args: JSON.stringify(vm.kernelArgs),
    cmd: vm.cmd === null ? null : JSON.stringify(vm.cmd),
    env: JSON.stringify(vm.env),
    network: vm.network,
    ip: vm.ip,
    ports: JSON.stringify(vm.ports),
    readiness: vm.readiness,
    agent_token: vm.agentToken,
    agent: vm.agent === null ? null : JSON.stringify(vm.agent),
    health: vm.health,
    health_reason: vm.healthReason,
    backend: vm.backend,
    accelerator: vm.accelerator,
    pid: vm.pid,
    boot_count: vm.bootCount,
    console_offset: vm.consoleOffset,
    exit_code: vm.exitCode,
    volumes: JSON.stringify(vm.volumes ?? []),
    process: vm.process ? JSON.stringify(vm.process) : null,
    classic: vm.classic ? JSON.stringify(vm.classic) : null,
    egress: vm.egress ? JSON.stringify(vm.egress) : null,
    node_id: vm.nodeId ?? null,
    labels: JSON.stringify(vm.labels ?? {}),
    created_at: vm.createdAt,
    updated_at: vm.updatedAt,
  };
}

export function imageCopyFromRow(r: Row): ImageCopy {
  return {
    imageId: r.image_id as string,
    nodeId: r.node_id as string,
    path: r.path as string,
    sizeBytes: Number(r.size_bytes),
    sha256: r.sha256 as string,
    state: r.state as ImageCopy['state'],
    updatedAt: Number(r.updated_at),
  };
}

/** The columns of an image copy, in the order both stores' upserts list them. */
export function imageCopyParams(c: ImageCopy): unknown[] {
  return [c.imageId, c.nodeId, c.path, c.sizeBytes, c.sha256, c.state, c.updatedAt];
}

/** Filters of listImageCopies as a WHERE clause with `?`-style placeholders (both engines renumber). */
export function imageCopyFilter(f: { imageId?: string; nodeId?: string }): { where: string; params: string[] } {
  const conds: string[] = [];
  const params: string[] = [];
  if (f.imageId !== undefined) { conds.push('image_id = ?'); params.push(f.imageId); }
  if (f.nodeId !== undefined) { conds.push('node_id = ?'); params.push(f.nodeId); }
  return { where: conds.length ? `WHERE ${conds.join(' AND ')}` : '', params };
}

export function imageFromRow(r: Row): ImageRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    digest: r.digest as string,
    format: r.format as ImageRecord['format'],
    path: r.path as string,
    sizeBytes: r.size_bytes as number,
    config: JSON.parse(r.config as string),
    createdAt: r.created_at as number,
    state: (r.state as ImageRecord['state'] | undefined) ?? 'ready',
    source: (r.source as string | null) ?? null,
    manifestDigest: (r.manifest_digest as string | null) ?? null,
    layers: JSON.parse((r.layers as string | undefined) ?? '[]'),
    builder: (r.builder as string | null) ?? null,
  };
}

export function imageToRow(image: ImageRecord): Row {
  return {
    id: image.id,
    name: image.name,
    digest: image.digest,
    format: image.format,
    path: image.path,
    size_bytes: image.sizeBytes,
    config: JSON.stringify(image.config),
    created_at: image.createdAt,
    state: image.state ?? 'ready',
    source: image.source ?? null,
    manifest_digest: image.manifestDigest ?? null,
    layers: JSON.stringify(image.layers ?? []),
    builder: image.builder ?? null,
  };
}

export function volumeFromRow(r: Row): VolumeRecord {
  return { id: r.id as string, name: r.name as string, sizeMib: r.size_mib as number, path: r.path as string, createdAt: r.created_at as number, nodeId: (r.node_id as string | null | undefined) ?? null };
}

export function containerFromRow(r: Row): ContainerRecord {
  return {
    id: r.id as string,
    image: r.image as string,
    restart: JSON.parse(r.restart as string),
    autoRemove: r.auto_remove === 1 || r.auto_remove === true,
    restartCount: r.restart_count as number,
    backoffStep: r.backoff_step as number,
    userStopped: r.user_stopped === 1 || r.user_stopped === true,
    handledBoot: r.handled_boot as number,
    restartAt: (r.restart_at as number | null) ?? null,
    createdAt: r.created_at as number,
  };
}

export function snapshotFromRow(r: Row): SnapshotRecord {
  return {
    id: r.id as string,
    sourceVmId: (r.source_vm_id as string | null) ?? null,
    templateId: (r.template_id as string | null) ?? null,
    path: r.path as string,
    meta: JSON.parse(r.meta as string),
    sizeBytes: r.size_bytes as number,
    createdAt: r.created_at as number,
    nodeId: (r.node_id as string | null | undefined) ?? null,
  };
}

export function containerToRow(c: ContainerRecord): Row {
  return {
    id: c.id,
    image: c.image,
    restart: JSON.stringify(c.restart),
    auto_remove: c.autoRemove ? 1 : 0,
    restart_count: c.restartCount,
    backoff_step: c.backoffStep,
    user_stopped: c.userStopped ? 1 : 0,
    handled_boot: c.handledBoot,
    restart_at: c.restartAt,
    created_at: c.createdAt,
  };
}

export function templateFromRow(r: Row): TemplateRecord {
  return {
    id: r.id as string,
    imageId: r.image_id as string,
    vcpus: r.vcpus as number,
    memoryMib: r.memory_mib as number,
    key: r.key as string,
    state: r.state as TemplateRecord['state'],
    stateReason: (r.state_reason as string | null) ?? null,
    snapshotId: (r.snapshot_id as string | null) ?? null,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
    nodeId: (r.node_id as string | null | undefined) ?? null,
  };
}

export function templateToRow(t: TemplateRecord): Row {
  return {
    id: t.id, image_id: t.imageId, vcpus: t.vcpus, memory_mib: t.memoryMib, key: t.key, state: t.state,
    state_reason: t.stateReason, snapshot_id: t.snapshotId, created_at: t.createdAt, updated_at: t.updatedAt,
    node_id: t.nodeId ?? null,
  };
}

export function nodeFromRow(r: Row): NodeRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    url: r.url as string,
    e2bUrl: (r.e2b_url as string | null | undefined) ?? null,
    state: r.state as NodeRecord['state'],
    incarnation: r.incarnation as number,
    capacity: JSON.parse(r.capacity as string),
    registeredAt: r.registered_at as number,
    heartbeatAt: r.heartbeat_at as number,
    lostAt: (r.lost_at as number | null) ?? null,
  };
}

/** VM states a lost node's VMs are moved out of (to 'lost'): those that had a VMM on it. */
export const LOSABLE_STATES: readonly VmState[] = ['creating', 'booting', 'ready', 'paused', 'stopping'];

/** camelCase field → snake_case column: the naming rule every table follows. */
export function column(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * The columns a partial update writes, encoded by the record's own codec: only the fields
 * present in `patch` (an `undefined` value counts as absent), so a concurrent writer's other
 * columns are never overwritten with a stale copy.
 */
export function patchColumns<T>(patch: Partial<T>, toRow: (full: T) => Row, never: readonly string[] = []): [string, unknown][] {
  const encoded = toRow(patch as T);
  const out: [string, unknown][] = [];
  for (const [field, value] of Object.entries(patch)) {
    if (value === undefined || never.includes(field)) continue;
    const col = column(field);
    if (!(col in encoded)) throw new Error(`no column for field ${field}`);
    out.push([col, encoded[col] ?? null]);
  }
  return out;
}

// Snapshots (firecracker-docs/snapshot-support.md). Create: pause (PATCH /vm), PUT
// /snapshot/create (Full, or Diff), optionally resume. Restore: a fresh Firecracker (its
// logger and metrics set on its command line) gets PUT /snapshot/load — so withSnapshotRestore() removes the boot
// configuration steps from the list and puts fc.snapshotLoad, fc.mmdsData and fc.resume in
// their place. Overrides are sent only when GET /version says the server knows them.
import { KilnError } from '../../errors.ts';
import type { FirecrackerApiClient } from './api-client.ts';
import type * as T from './api-types.ts';
import { api, caps, type BootContext, type BootStep } from './boot-steps.ts';
import { JAIL } from './jailer.ts';
import { apiIdFor } from './spec.ts';
import type { StepList } from '../../util/steps.ts';
import type { FirecrackerCapabilities } from './version.ts';

export interface RestoreSpec {
  /** The microVM state file. */
  snapshotPath: string;
  /** File: the memory file (mapped private, loaded on demand). Uffd: a page-fault handler's socket. */
  memBackend: { type: 'File' | 'Uffd'; path: string };
  trackDirtyPages?: boolean;
  /** Resume the guest once loaded (default true). */
  resume?: boolean;
  /** Re-point interfaces at this clone's taps. */
  networkOverrides?: { ifaceId: string; hostDevName: string }[];
  /**
   * The vsock `uds_path` the snapshotted VMM was given (as it saw it). When this VM's differs,
   * the restore needs `vsock_override` (Firecracker ≥ 1.16). Under the jailer both are
   * `/vsock.sock` by construction.
   */
  sourceVsockPath?: string;
  /** Advance the guest clock by the time spent in the snapshot (≥ 1.16, x86_64). */
  clockRealtime?: boolean;
}

function unsupported(what: string, c: FirecrackerCapabilities): never {
  throw new KilnError('KILN_ERR_VMM_FAILED', `restore needs ${what}, which Firecracker ${c.version.raw} does not have (needs ≥ 1.16)`, {
    firecracker_version: c.version.raw,
  });
}

/** The PUT /snapshot/load body for this VM and this server. */
export function loadSnapshotBody(
  r: RestoreSpec,
  o: { caps: FirecrackerCapabilities; vmmPath: (host: string) => string; vsockPath?: string; jailed: boolean },
): T.SnapshotLoadParams {
  const body: T.SnapshotLoadParams = {
    snapshot_path: o.vmmPath(r.snapshotPath),
    mem_backend: { backend_type: r.memBackend.type, backend_path: o.vmmPath(r.memBackend.path) },
    // Resumed by fc.resume after the MMDS data store (not part of snapshots) is refilled.
    resume_vm: false,
  };
  if (r.trackDirtyPages !== undefined) body.track_dirty_pages = r.trackDirtyPages;
  if (r.networkOverrides?.length) {
    if (!o.caps.networkOverrides) unsupported('network_overrides', o.caps);
    body.network_overrides = r.networkOverrides.map((n) => ({ iface_id: apiIdFor(n.ifaceId), host_dev_name: n.hostDevName }));
  }
  if (o.vsockPath) {
    const want = o.vmmPath(o.vsockPath);
    const recorded = r.sourceVsockPath ?? (o.jailed ? JAIL.vsock : undefined);
    if (recorded !== want) {
      if (!o.caps.vsockOverride) unsupported(`its vsock socket moved to ${want} (vsock_override)`, o.caps);
      body.vsock_override = { uds_path: want };
    }
  }
  if (r.clockRealtime) {
    if (!o.caps.clockRealtime) unsupported('clock_realtime', o.caps);
    body.clock_realtime = true;
  }
  return body;
}

function restoreOf(ctx: BootContext): RestoreSpec {
  if (!ctx.spec.restore) throw new KilnError('KILN_ERR_INTERNAL', 'restore step without spec.restore');
  return ctx.spec.restore;
}

export const snapshotLoad: BootStep = {
  name: 'fc.snapshotLoad',
  async run(ctx) {
    const body = loadSnapshotBody(restoreOf(ctx), { caps: caps(ctx), vmmPath: ctx.vmmPath, vsockPath: ctx.vsockPath, jailed: !!ctx.jail });
    await api(ctx).loadSnapshot(body, ctx.signal);
  },
};

/** The MMDS data store is not in the snapshot (its config is): refill it before resuming. */
export const mmdsData: BootStep = {
  name: 'fc.mmdsData',
  async run(ctx) {
    if (ctx.spec.mmds?.data) await api(ctx).putMmds(ctx.spec.mmds.data, ctx.signal);
  },
};

export const resume: BootStep = {
  name: 'fc.resume',
  async run(ctx) {
    if (restoreOf(ctx).resume !== false) await api(ctx).patchVm('Resumed', ctx.signal);
  },
};

/** Boot configuration a snapshot already holds; Firecracker refuses it before a load. */
const CONFIG_STEPS = [
  'fc.kernel',
  'fc.machineConfig',
  'fc.serial',
  'fc.bootSource',
  'fc.drives',
  'fc.networkInterfaces',
  'fc.vsock',
  'fc.entropy',
  'fc.balloon',
  'fc.mmds',
  'fc.instanceStart',
];

export function withSnapshotRestore(list: StepList<BootContext>): StepList<BootContext> {
  return list.remove(...CONFIG_STEPS).insertAfter('fc.version', snapshotLoad, mmdsData, resume);
}

export interface CreateSnapshotOptions {
  /** Where to write the microVM state and the guest memory (host paths; in the jail under the jailer). */
  snapshotPath: string;
  memFilePath: string;
  /** Default Full. Diff needs track_dirty_pages (or relies on mincore without swap). */
  type?: T.SnapshotType;
  /** Resume the guest afterwards (default false: it stays paused). */
  resume?: boolean;
}

/** Pauses the VM and writes a snapshot of it. */
export async function createSnapshot(
  client: FirecrackerApiClient,
  o: CreateSnapshotOptions,
  vmmPath: (host: string) => string,
  signal?: AbortSignal,
): Promise<void> {
  const body: T.SnapshotCreateParams = {
    snapshot_type: o.type ?? 'Full',
    snapshot_path: vmmPath(o.snapshotPath),
    mem_file_path: vmmPath(o.memFilePath),
  };
  await client.patchVm('Paused', signal);
  await client.createSnapshot(body, signal);
  if (o.resume) await client.patchVm('Resumed', signal);
}

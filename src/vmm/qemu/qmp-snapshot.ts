// The QMP sequences behind QEMU snapshots and restores. QEMU 7.2 has no `file:` migration
// URI, and a confined QEMU may not spawn `exec:` helpers: a save streams to a Unix socket
// kilnd writes to the file, a restore reads an inherited fd (qemu-driver.ts). Only `execute`
// is used, so the sequences are unit-tested against a scripted QMP (qmp-snapshot.test.ts).
import { KilnError } from '../../errors.ts';

export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
}

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
}

/** QEMU's default migration bandwidth cap is 128 MiB/s; a local file needs none. */
export const MIGRATE_MAX_BANDWIDTH = 64 * 1024 ** 3;
const POLL_MS = 5;

/** Polls query-migrate until the migration settles; throws with QEMU's reason on failure. */
export async function awaitMigration(qmp: QmpExecutor, what: string, timeoutMs = 300_000, sleep = defaultSleep): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    switch (info.status) {
      case 'completed':
        return;
      case 'failed':
      case 'cancelled':
        throw new KilnError('KILN_ERR_SNAPSHOT_FAILED', `${what}: migration ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (Date.now() > deadline) throw new KilnError('KILN_ERR_SNAPSHOT_FAILED', `${what}: migration still ${info.status ?? 'unknown'} after ${timeoutMs} ms`);
    await sleep(POLL_MS);
  }
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function setCapabilities(qmp: QmpExecutor, ignoreShared: boolean): Promise<void> {
  // x-ignore-shared: RAM blocks mapped shared (the template's memory file) are left out of
  // the stream; both ends must agree on it, since it changes the stream's RAM headers.
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }] });
}

/**
 * stop → migrate to `stateFile` → completed → cont (if `resume` and the guest was running).
 * The guest is stopped first so the state is one instant: disk writes drained, the scratch
 * disk copied by the caller while paused matches the memory image.
 */
export async function saveVmState(qmp: QmpExecutor, o: { uri: string; ignoreShared: boolean; resume: boolean; sleep?: typeof defaultSleep }): Promise<{ wasRunning: boolean }> {
  const { status } = await qmp.execute<{ status: string }>('query-status');
  const wasRunning = status === 'running';
  if (wasRunning) await qmp.execute('stop');
  let ok = false;
  try {
    await setCapabilities(qmp, o.ignoreShared);
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': MIGRATE_MAX_BANDWIDTH });
    await qmp.execute('migrate', { uri: o.uri });
    await awaitMigration(qmp, 'snapshot', undefined, o.sleep);
    ok = true;
  } finally {
    // A failed save still gives the guest back if it was asked to run on.
    if (o.resume && wasRunning) await qmp.execute('cont').catch((e) => { if (ok) throw e; });
  }
  return { wasRunning };
}

/** On a QEMU started with `-incoming defer`: load the stream at `uri`; the guest stays paused. */
export async function loadVmState(qmp: QmpExecutor, o: { uri: string; ignoreShared: boolean; sleep?: typeof defaultSleep }): Promise<void> {
  await setCapabilities(qmp, o.ignoreShared);
  await qmp.execute('migrate-incoming', { uri: o.uri });
  await awaitMigration(qmp, 'restore', undefined, o.sleep);
}

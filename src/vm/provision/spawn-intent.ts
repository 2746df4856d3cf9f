// The intent to spawn a VMM, written into the VM's runtime dir before the VMM starts and
// completed with its pid once it runs. A kilnd killed at any instant of a provision leaves
// either no VMM or a VMM its successor can name: by this file (pid, backend, cgroup), and
// failing that by its command line (vmm-sweep.ts). The file is node-local on purpose: the
// VMM is too. It is not fsynced: a kilnd crash keeps the page cache, and a host crash takes
// the VMMs with it.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { BackendName } from '../../vmm/driver.ts';

export const INTENT_FILE = 'vmm.intent.json';

export interface SpawnIntent {
  vmId: string;
  backend: BackendName;
  /** Boot number this VMM belongs to (a restart writes a new intent). */
  boot: number;
  /** The VM's cgroup carries its id where the backend confines VMMs in cgroups (driver.reap). */
  cgroup: string | null;
  /** Null until the VMM runs. */
  pid: number | null;
  at: number;
}

export async function writeIntent(runtimeDir: string, intent: SpawnIntent): Promise<void> {
  const file = path.join(runtimeDir, INTENT_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(intent), { mode: 0o600 });
  await fs.rename(tmp, file);
}

export async function removeIntent(runtimeDir: string): Promise<void> {
  await fs.rm(path.join(runtimeDir, INTENT_FILE), { force: true });
}

/** Every intent under `vmsDir` (one per runtime dir that has one); unreadable files are skipped. */
export async function readIntents(vmsDir: string): Promise<SpawnIntent[]> {
  const out: SpawnIntent[] = [];
  for (const dir of await fs.readdir(vmsDir).catch(() => [] as string[])) {
    const text = await fs.readFile(path.join(vmsDir, dir, INTENT_FILE), 'utf8').catch(() => null);
    if (text === null) continue;
    try {
      const i = JSON.parse(text) as SpawnIntent;
      if (i.vmId === dir && (i.pid === null || Number.isInteger(i.pid))) out.push(i);
    } catch {
      // A torn write cannot happen (rename), but a hand-edited file must not stop the start-up.
    }
  }
  return out;
}

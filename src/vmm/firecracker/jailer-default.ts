// Whether kilnd runs its Firecrackers under the jailer: on by default whenever a jailer
// binary is there (next to the firecracker binary, as release archives ship them, or on PATH);
// KILN_FIRECRACKER_JAILER=off turns it off, =on makes a missing jailer a setup error.
import { constants as FS } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { findBinary } from '../../util/find-binary.ts';
import type { JailerOptions } from './jailer.ts';

export type JailerMode = 'auto' | 'on' | 'off';

export interface JailerSettings {
  mode: JailerMode;
  /** KILN_FIRECRACKER_JAILER_BIN; default: `jailer` beside the firecracker binary, else on PATH. */
  binary?: string;
  /** The unprivileged uid/gid every jailed Firecracker runs as (KILN_FIRECRACKER_JAIL_UID/GID). */
  uid: number;
  gid: number;
  /** Where jails are built: on the state dir's filesystem, so drives are hard-linked, not copied. */
  chrootBaseDir: string;
}

export interface JailerDecision {
  jailer?: JailerOptions;
  reason: string;
}

export function jailerSettingsFromEnv(env: NodeJS.ProcessEnv, stateDir: string): JailerSettings {
  const mode = (env.KILN_FIRECRACKER_JAILER ?? 'auto') as JailerMode;
  if (!['auto', 'on', 'off'].includes(mode)) {
    throw new KilnError('KILN_ERR_VALIDATION', `KILN_FIRECRACKER_JAILER must be auto, on or off (got ${JSON.stringify(mode)})`);
  }
  const id = (v: string | undefined, name: string) => {
    const n = Number(v ?? 65534);
    if (!Number.isInteger(n) || n <= 0) throw new KilnError('KILN_ERR_VALIDATION', `${name} must be a positive integer (not root)`);
    return n;
  };
  return {
    mode,
    ...(env.KILN_FIRECRACKER_JAILER_BIN ? { binary: env.KILN_FIRECRACKER_JAILER_BIN } : {}),
    uid: id(env.KILN_FIRECRACKER_JAIL_UID, 'KILN_FIRECRACKER_JAIL_UID'),
    gid: id(env.KILN_FIRECRACKER_JAIL_GID, 'KILN_FIRECRACKER_JAIL_GID'),
    chrootBaseDir: path.join(stateDir, 'jailer'),
  };
}

async function besideFirecracker(firecracker: string): Promise<string | null> {
  const real = await fs.realpath(firecracker).catch(() => null);
  for (const dir of new Set([path.dirname(firecracker), ...(real ? [path.dirname(real)] : [])])) {
    const candidate = path.join(dir, 'jailer');
    if (await fs.access(candidate, FS.X_OK).then(() => true, () => false)) return candidate;
  }
  return null;
}

/** cgroup v2 when /sys/fs/cgroup is the unified hierarchy, v1 otherwise. */
async function cgroupVersion(): Promise<1 | 2> {
  return (await fs.access('/sys/fs/cgroup/cgroup.controllers').then(() => true, () => false)) ? 2 : 1;
}

export async function decideJailer(
  s: JailerSettings,
  firecrackerBinary: string,
  deps: { find?: (name: string) => Promise<string | null>; cgroupVersion?: () => Promise<1 | 2> } = {},
): Promise<JailerDecision> {
  if (s.mode === 'off') return { reason: 'jailer off by configuration (KILN_FIRECRACKER_JAILER=off): each Firecracker runs as root in a private mount namespace' };
  const find = deps.find ?? ((n: string) => findBinary(n));
  const binary = s.binary ? await find(s.binary) : ((await besideFirecracker(firecrackerBinary)) ?? (await find('jailer')));
  if (!binary) {
    const why = s.binary ? `jailer binary ${s.binary} is missing or not executable` : 'no jailer binary beside firecracker or on PATH';
    if (s.mode === 'on') throw new KilnError('KILN_ERR_HOST_SETUP', `KILN_FIRECRACKER_JAILER=on but ${why}`);
    return { reason: `${why}: each Firecracker runs as root in a private mount namespace (install the jailer from the same release)` };
  }
  const jailer: JailerOptions = {
    binary,
    uid: s.uid,
    gid: s.gid,
    chrootBaseDir: s.chrootBaseDir,
    cgroupVersion: await (deps.cgroupVersion ?? cgroupVersion)(),
  };
  return { jailer, reason: `jailer ${binary}: each Firecracker runs as uid ${s.uid}:${s.gid} chrooted under ${s.chrootBaseDir}` };
}

// OCI image config → what kiln-init runs: entrypoint/cmd kept apart (Docker semantics), env as
// a map, workdir defaulted, and the user resolved to numeric uid:gid against the image's own
// /etc/passwd and /etc/group at conversion time (the guest has no resolver before exec).
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import type { ImageConfig } from '../store/store.ts';
import type { OciImageConfig } from './oci/types.ts';

async function readTable(root: string, file: string): Promise<string[][]> {
  // Read through the tree without following a symlinked /etc out of it: lstat each part.
  const p = path.join(root, file);
  const st = await fs.lstat(p).catch(() => null);
  if (!st?.isFile() || (await fs.lstat(path.join(root, 'etc')).catch(() => null))?.isSymbolicLink()) return [];
  return (await fs.readFile(p, 'utf8')).split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
}

/** Docker's rules: "name|uid[:group|gid]"; a uid alone takes its passwd gid, or 0. */
export async function resolveUser(root: string, user: string): Promise<string> {
  if (user === '') return '0:0';
  const [u, g] = user.split(':', 2) as [string, string | undefined];
  const passwd = await readTable(root, 'etc/passwd');
  const row = passwd.find((r) => r[0] === u) ?? (/^\d+$/.test(u) ? passwd.find((r) => r[2] === u) : undefined);
  let uid: number;
  if (/^\d+$/.test(u)) uid = Number(u);
  else if (row) uid = Number(row[2]);
  else throw new KilnError('KILN_ERR_IMAGE_INVALID', `image user ${JSON.stringify(u)} is not in the image's /etc/passwd`);
  let gid: number;
  if (g === undefined) gid = row ? Number(row[3]) : 0;
  else if (/^\d+$/.test(g)) gid = Number(g);
  else {
    const grow = (await readTable(root, 'etc/group')).find((r) => r[0] === g);
    if (!grow) throw new KilnError('KILN_ERR_IMAGE_INVALID', `image group ${JSON.stringify(g)} is not in the image's /etc/group`);
    gid = Number(grow[2]);
  }
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new KilnError('KILN_ERR_IMAGE_INVALID', `image user ${JSON.stringify(user)} does not resolve to numbers`);
  return `${uid}:${gid}`;
}

export async function imageConfigFromOci(root: string, oci: OciImageConfig): Promise<ImageConfig> {
  const env: Record<string, string> = {};
  for (const kv of oci.env) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return {
    entrypoint: oci.entrypoint,
    cmd: oci.cmd,
    env,
    workdir: oci.workdir || '/',
    user: await resolveUser(root, oci.user),
  };
}

/** argv for a VM: request cmd replaces the image's cmd; the entrypoint is kept. */
export function workloadArgv(config: ImageConfig, cmdOverride: string[] | null): string[] {
  const argv = [...(config.entrypoint ?? []), ...(cmdOverride ?? config.cmd)];
  if (argv.length === 0) throw new KilnError('KILN_ERR_VALIDATION', 'the image has no entrypoint or cmd: pass one with "cmd"');
  return argv;
}

// The workload's process from the image's OCI config plus the request's overrides, merged
// the way Docker merges them:
// - cmd without entrypoint: the image's entrypoint stays, cmd replaces the image's cmd;
// - entrypoint given: it replaces the image's entrypoint AND resets the image's cmd (only the
//   request's cmd follows it); an empty entrypoint clears it;
// - env: the image's, then the request's, overriding by key;
// - workdir: the request's, else the image's, else "/";
// - user: the request's "name|uid[:group|gid]" (resolved in the guest against the image's own
//   /etc/passwd and /etc/group), else the image's (already numeric uid:gid from conversion).
import { KilnError } from '../errors.ts';
import type { ImageConfig } from '../store/store.ts';

export interface ProcessOverrides {
  entrypoint?: string[] | null;
  cmd?: string[] | null;
  env?: Record<string, string>;
  workdir?: string | null;
  user?: string | null;
}

export interface MergedProcess {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** Numeric ids known on the host (the image's user), or a spec for the guest to resolve. */
  user: { uid: number; gid: number } | { spec: string };
}

/** Docker's --user syntax: a name or uid, optionally ":" a group name or gid. */
export const USER_SPEC = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$/;

export function mergeProcess(image: ImageConfig, o: ProcessOverrides): MergedProcess {
  const entrypoint = o.entrypoint ?? image.entrypoint ?? [];
  const cmd = o.cmd ?? (o.entrypoint != null ? [] : image.cmd);
  const argv = [...entrypoint, ...cmd];
  if (argv.length === 0) {
    throw new KilnError('KILN_ERR_VALIDATION', 'nothing to run: the image has no entrypoint or cmd and the request gives none');
  }
  const cwd = o.workdir || image.workdir || '/';
  if (!cwd.startsWith('/')) throw new KilnError('KILN_ERR_VALIDATION', `workdir must be absolute: ${JSON.stringify(cwd)}`);
  let user: MergedProcess['user'];
  if (o.user != null && o.user !== '') {
    if (!USER_SPEC.test(o.user)) throw new KilnError('KILN_ERR_VALIDATION', `user must be name|uid[:group|gid]: ${JSON.stringify(o.user)}`);
    user = { spec: o.user };
  } else {
    const [uid, gid] = (image.user || '0:0').split(':').map((n) => Number.parseInt(n, 10));
    user = { uid: Number.isInteger(uid) ? uid! : 0, gid: Number.isInteger(gid) ? gid! : 0 };
  }
  return { argv, env: { ...image.env, ...(o.env ?? {}) }, cwd, user };
}

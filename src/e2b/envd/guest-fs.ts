// envd's filesystem calls, carried out in the guest by exec'ing coreutils/findutils as the
// caller's user: the guest's own permission checks apply, and kiln's agent needs no new
// operation (one `find -printf` gives every EntryInfo field). Each call is one short exec
// through the agent (see docs/e2b.md for why this rather than a second agent in the guest).
import path from 'node:path/posix';
import type { AgentClient } from '../../guest/agent/client.ts';
import { SANDBOX_PATH } from '../base-template.ts';
import type { GuestUser } from '../sandbox-service.ts';

export type FsErrorKind = 'not_found' | 'exists' | 'not_dir' | 'permission' | 'invalid' | 'failed';

export class GuestFsError extends Error {
  constructor(
    readonly kind: FsErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export interface Entry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  path: string;
  size: number;
  /** Go's os.FileMode bits, as envd reports them (type bits included). */
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  mtimeMs: number;
  symlinkTarget?: string;
}

/** One entry = nine NUL-terminated fields. */
const FORMAT = '%y\\0%s\\0%m\\0%M\\0%u\\0%g\\0%T@\\0%l\\0%p\\0';
const FIELDS = 9;
const GO_MODE_DIR = 0x80000000;
const GO_MODE_SYMLINK = 0x08000000;
const MAX_OUTPUT = 64 * 1024 * 1024;

/** Exit codes the scripts below use for what they check themselves. */
const EXIT: Record<number, FsErrorKind> = { 2: 'not_found', 17: 'exists', 20: 'not_dir', 22: 'invalid' };

const EXISTS = '[ -e "$1" ] || [ -L "$1" ] || { echo "no such file or directory: $1" >&2; exit 2; }';
const SCRIPTS = {
  stat: `${EXISTS}; exec find "$1" -maxdepth 0 -printf "$2"`,
  list: `${EXISTS}; [ -d "$1" ] || { echo "path is not a directory: $1" >&2; exit 20; }; exec find "$1" -mindepth 1 -maxdepth "$3" -printf "$2"`,
  mkdir: `if [ -e "$1" ] || [ -L "$1" ]; then echo "directory already exists: $1" >&2; exit 17; fi; mkdir -p -- "$1" && exec find "$1" -maxdepth 0 -printf "$2"`,
  move: `${EXISTS}; mkdir -p -- "$(dirname -- "$3")" && mv -T -- "$1" "$3" && exec find "$3" -maxdepth 0 -printf "$2"`,
  remove: `${EXISTS}; rm -rf -- "$1"`,
  isdir: `${EXISTS}; [ -d "$1" ] || { echo "path is not a directory: $1" >&2; exit 20; }`,
  parents: 'mkdir -p -- "$(dirname -- "$1")"',
};

/** A path as envd takes it: relative ones are under the user's home; `~` is that home. */
export function resolvePath(p: string, user: GuestUser): string {
  if (!p) throw new GuestFsError('invalid', 'path is required');
  if (p.includes('\0')) throw new GuestFsError('invalid', 'path contains a NUL byte');
  if (p === '~') return user.home;
  if (p.startsWith('~/')) return path.join(user.home, p.slice(2));
  return path.isAbsolute(p) ? path.normalize(p) : path.join(user.home, p);
}

export function userEnv(user: GuestUser, extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: SANDBOX_PATH, HOME: user.home, USER: user.name, LOGNAME: user.name, ...extra };
}

function parseEntries(out: Buffer): Entry[] {
  const f = out.toString('utf8').split('\0');
  const entries: Entry[] = [];
  for (let i = 0; i + FIELDS <= f.length; i += FIELDS) {
    const [y, size, mode, perms, owner, group, mtime, link, p] = f.slice(i, i + FIELDS) as string[];
    const type = y === 'f' ? 'file' : y === 'd' ? 'dir' : y === 'l' ? 'symlink' : 'other';
    const perm = parseInt(mode!, 8);
    entries.push({
      name: path.basename(p!),
      type,
      path: p!,
      size: Number(size),
      mode: (type === 'dir' ? GO_MODE_DIR : type === 'symlink' ? GO_MODE_SYMLINK : 0) + perm,
      // Go's FileMode.String(), which envd sends: symlinks are 'L'.
      permissions: type === 'symlink' ? `L${perms!.slice(1)}` : perms!,
      owner: owner!,
      group: group!,
      mtimeMs: Math.round(Number(mtime) * 1000),
      ...(type === 'symlink' ? { symlinkTarget: link! } : {}),
    });
  }
  return entries;
}

async function run(agent: AgentClient, user: GuestUser, script: string, args: string[], signal?: AbortSignal): Promise<Buffer> {
  const r = await agent.execCollect({
    argv: ['/bin/sh', '-c', script, 'sh', ...args],
    env: userEnv(user),
    cwd: '/',
    uid: user.uid,
    gid: user.gid,
    timeoutMs: 60_000,
    maxOutputBytes: MAX_OUTPUT,
    ...(signal ? { signal } : {}),
  });
  if (r.exitCode === 0) {
    if (r.truncated) throw new GuestFsError('failed', `the answer is larger than ${MAX_OUTPUT} bytes`);
    return r.stdout;
  }
  const msg = r.stderr.toString('utf8').trim() || `exit ${r.exitCode ?? `signal ${r.signal}`}`;
  if (r.exitCode !== null && EXIT[r.exitCode]) throw new GuestFsError(EXIT[r.exitCode]!, msg);
  if (/permission denied|operation not permitted/i.test(msg)) throw new GuestFsError('permission', msg);
  if (/no such file or directory/i.test(msg)) throw new GuestFsError('not_found', msg);
  if (/not a directory/i.test(msg)) throw new GuestFsError('not_dir', msg);
  throw new GuestFsError('failed', msg);
}

export class GuestFs {
  constructor(
    private readonly agent: AgentClient,
    private readonly user: GuestUser,
  ) {}

  async stat(p: string): Promise<Entry> {
    const [e] = parseEntries(await run(this.agent, this.user, SCRIPTS.stat, [p, FORMAT]));
    if (!e) throw new GuestFsError('failed', `stat ${p}: no answer`);
    return e;
  }

  async list(p: string, depth: number): Promise<Entry[]> {
    return parseEntries(await run(this.agent, this.user, SCRIPTS.list, [p, FORMAT, String(depth)]));
  }

  async mkdir(p: string): Promise<Entry> {
    const [e] = parseEntries(await run(this.agent, this.user, SCRIPTS.mkdir, [p, FORMAT]));
    if (!e) throw new GuestFsError('failed', `mkdir ${p}: no answer`);
    return e;
  }

  async move(from: string, to: string): Promise<Entry> {
    const [e] = parseEntries(await run(this.agent, this.user, SCRIPTS.move, [from, FORMAT, to]));
    if (!e) throw new GuestFsError('failed', `move ${from}: no answer`);
    return e;
  }

  async remove(p: string): Promise<void> {
    await run(this.agent, this.user, SCRIPTS.remove, [p]);
  }

  /** The directories above `p`, made as the user (an upload's parents are theirs). */
  async mkdirParents(p: string): Promise<void> {
    await run(this.agent, this.user, SCRIPTS.parents, [p]);
  }

  async requireDir(p: string): Promise<void> {
    await run(this.agent, this.user, SCRIPTS.isdir, [p]);
  }
}

export const parseEntriesForTest = parseEntries;
export const FIND_FORMAT = FORMAT;

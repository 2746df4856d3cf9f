// envd's filesystem.Filesystem: Stat, MakeDir, Move, ListDir, Remove through GuestFs (one
// exec each, as the caller's user), and directory watches through inotifywait in the guest
// (inotify-tools is in the base template), its lines turned into envd's events.
import { randomUUID } from 'node:crypto';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { ExecHandle } from '../../guest/agent/client.ts';
import { EventType, FileType, Filesystem, type FilesystemEventSchema, type EntryInfoSchema } from '../gen/filesystem/filesystem_pb.ts';
import { AsyncQueue } from './async-queue.ts';
import type { Caller } from './caller.ts';
import { GuestFs, GuestFsError, resolvePath, userEnv, type Entry } from './guest-fs.ts';
import { connectErrorFrom, keepaliveMs } from './process-service.ts';

type FsEvent = MessageInitShape<typeof FilesystemEventSchema>;
type EntryInit = MessageInitShape<typeof EntryInfoSchema>;

export function entryInfo(e: Entry): EntryInit {
  return {
    name: e.name,
    type: e.type === 'file' ? FileType.FILE : e.type === 'dir' ? FileType.DIRECTORY : e.type === 'symlink' ? FileType.SYMLINK : FileType.UNSPECIFIED,
    path: e.path,
    size: BigInt(e.size),
    mode: e.mode,
    permissions: e.permissions,
    owner: e.owner,
    group: e.group,
    modifiedTime: timestampFromMs(e.mtimeMs),
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
  };
}

export function fsError(e: unknown): ConnectError {
  if (!(e instanceof GuestFsError)) return connectErrorFrom(e);
  const code = { not_found: Code.NotFound, exists: Code.AlreadyExists, not_dir: Code.InvalidArgument, permission: Code.PermissionDenied, invalid: Code.InvalidArgument, failed: Code.Internal }[e.kind];
  return new ConnectError(e.message, code);
}

/** inotifywait's event names → envd's (fsnotify's): a move away is a rename, a move here a create. */
export function eventType(names: string): EventType | null {
  const set = new Set(names.split(','));
  if (set.has('CREATE') || set.has('MOVED_TO')) return EventType.CREATE;
  if (set.has('MODIFY') || set.has('CLOSE_WRITE')) return EventType.WRITE;
  if (set.has('DELETE')) return EventType.REMOVE;
  if (set.has('MOVED_FROM')) return EventType.RENAME;
  if (set.has('ATTRIB')) return EventType.CHMOD;
  return null;
}

/** A running inotifywait: its events in a queue; resolves `ready` once its watches are set. */
class GuestWatch {
  readonly events = new AsyncQueue<FsEvent>();
  readonly ready: Promise<void>;
  private readonly handle: ExecHandle;

  constructor(c: Caller, dir: string, recursive: boolean) {
    this.handle = c.agent.exec({
      argv: ['inotifywait', '-m', ...(recursive ? ['-r'] : []), '-e', 'create,modify,delete,moved_from,moved_to,attrib', '--format', '%e\t%w%f', '--', dir],
      env: userEnv(c.user),
      cwd: '/',
      uid: c.user.uid,
      gid: c.user.gid,
    });
    const prefix = dir.endsWith('/') ? dir : `${dir}/`;
    let out = '';
    this.handle.stdout.on('data', (b: Buffer) => {
      out += b.toString('utf8');
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const tab = line.indexOf('\t');
        if (tab < 0) continue;
        const type = eventType(line.slice(0, tab));
        const full = line.slice(tab + 1);
        if (type === null) continue;
        this.events.push({ name: full.startsWith(prefix) ? full.slice(prefix.length) : full, type });
      }
    });
    let err = '';
    this.ready = new Promise<void>((resolve, reject) => {
      this.handle.stderr.on('data', (b: Buffer) => {
        err += b.toString('utf8');
        if (err.includes('Watches established')) resolve();
      });
      this.handle.result.then(
        (r) => {
          const msg = err.replace(/Setting up watches\.[^\n]*\n?|Watches established\.\n?/g, '').trim() || `inotifywait ended (${r.exitCode ?? `signal ${r.signal}`})`;
          const e = /no such file|not found/i.test(msg) ? new ConnectError(msg, Code.NotFound) : new ConnectError(msg, Code.Internal);
          reject(e);
          this.events.end(r.signal !== null ? null : e);
        },
        (e) => {
          reject(connectErrorFrom(e));
          this.events.end(connectErrorFrom(e));
        },
      );
    });
    this.ready.catch(() => {});
  }

  stop(): void {
    this.handle.kill(9);
    this.handle.stdin.destroy();
    this.events.end();
  }
}

/** The watchers made by CreateWatcher, per sandbox: polled with GetWatcherEvents. */
export class WatcherTable {
  readonly watchers = new Map<string, { watch: GuestWatch; buffered: FsEvent[] }>();

  closeAll(): void {
    for (const w of this.watchers.values()) w.watch.stop();
    this.watchers.clear();
  }
}

export function filesystemService(watchersFor: (ctx: HandlerContext) => WatcherTable, callerFor: (ctx: HandlerContext) => Promise<Caller>): Partial<ServiceImpl<typeof Filesystem>> {
  const withFs = async <T>(ctx: HandlerContext, fn: (fs: GuestFs, c: Caller) => Promise<T>): Promise<T> => {
    let c: Caller;
    try {
      c = await callerFor(ctx);
    } catch (e) {
      throw connectErrorFrom(e);
    }
    try {
      return await fn(new GuestFs(c.agent, c.user), c);
    } catch (e) {
      throw fsError(e);
    }
  };

  const startWatch = async (ctx: HandlerContext, p: string, recursive: boolean): Promise<GuestWatch> =>
    withFs(ctx, async (fs, c) => {
      const dir = resolvePath(p, c.user);
      await fs.requireDir(dir);
      const w = new GuestWatch(c, dir, recursive);
      try {
        await w.ready;
      } catch (e) {
        w.stop();
        throw e;
      }
      return w;
    });

  return {
    stat: (req, ctx) => withFs(ctx, async (fs, c) => ({ entry: entryInfo(await fs.stat(resolvePath(req.path, c.user))) })),
    makeDir: (req, ctx) => withFs(ctx, async (fs, c) => ({ entry: entryInfo(await fs.mkdir(resolvePath(req.path, c.user))) })),
    move: (req, ctx) => withFs(ctx, async (fs, c) => ({ entry: entryInfo(await fs.move(resolvePath(req.source, c.user), resolvePath(req.destination, c.user))) })),
    remove: (req, ctx) => withFs(ctx, async (fs, c) => (await fs.remove(resolvePath(req.path, c.user)), {})),
    listDir: (req, ctx) =>
      withFs(ctx, async (fs, c) => {
        const depth = req.depth || 1;
        return { entries: (await fs.list(resolvePath(req.path, c.user), depth)).map(entryInfo) };
      }),

    async *watchDir(req, ctx) {
      const w = await startWatch(ctx, req.path, req.recursive);
      try {
        yield { event: { case: 'start', value: {} } };
        for await (const ev of w.events.drain(ctx.signal, keepaliveMs(ctx), () => null as unknown as FsEvent)) {
          if (ev === null) yield { event: { case: 'keepalive', value: {} } };
          else yield { event: { case: 'filesystem', value: ev } };
        }
      } finally {
        w.stop();
      }
    },

    async createWatcher(req, ctx) {
      const w = await startWatch(ctx, req.path, req.recursive);
      const id = randomUUID();
      const entry = { watch: w, buffered: [] as FsEvent[] };
      watchersFor(ctx).watchers.set(id, entry);
      void (async () => {
        for await (const ev of w.events.drain(new AbortController().signal)) entry.buffered.push(ev);
      })().catch(() => {});
      return { watcherId: id };
    },

    async getWatcherEvents(req, ctx) {
      await withFs(ctx, async () => undefined);
      const w = watchersFor(ctx).watchers.get(req.watcherId);
      if (!w) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      return { events: w.buffered.splice(0) };
    },

    async removeWatcher(req, ctx) {
      await withFs(ctx, async () => undefined);
      const t = watchersFor(ctx);
      const w = t.watchers.get(req.watcherId);
      if (!w) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      w.watch.stop();
      t.watchers.delete(req.watcherId);
      return {};
    },
  };
}

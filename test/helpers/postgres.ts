// A throwaway PostgreSQL server for tests and benches: Debian's PostgreSQL 15, a cluster made by
// initdb in a temp dir, run by pg_ctl as the unprivileged `kiln-pg` system user (postgres
// refuses root; created once, idempotently), reachable over a unix socket in that dir (and
// on TCP when asked). dispose() stops it and removes the dir; a test process that dies first
// still takes its server down (exit hook).
import { chownSync, readFileSync, rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import pg from 'pg';
import { initdb, pgCtlStart, pgCtlStop } from '../../src/tools/postgres.ts';
import { ensureSystemUser } from '../../src/tools/useradd.ts';

export interface TestPostgres {
  /** Directory holding the unix socket (and the data dir). */
  readonly socketDir: string;
  readonly port: number;
  /** Connection URL of database `db`, over the unix socket, or TCP when `tcpHost` is given. */
  url(db: string, tcpHost?: string): string;
  /** Creates a fresh database; returns its URL. */
  createDatabase(name?: string): Promise<string>;
  dispose(): Promise<void>;
}

const OS_USER = process.env.KILN_TEST_PG_USER ?? 'kiln-pg';
const SUPERUSER = 'kiln';
let dbCounter = 0;

export async function startPostgres(opts: { listen?: string; port?: number } = {}): Promise<TestPostgres> {
  const root = process.getuid?.() === 0;
  const ids = root ? await ensureSystemUser(OS_USER, 'kiln test PostgreSQL (postgres refuses root)') : null;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-pg-'));
  if (ids) chownSync(dir, ids.uid, ids.gid);
  const dataDir = path.join(dir, 'data');
  const runAs = root ? OS_USER : undefined;
  const port = opts.port ?? 5432;
  let stopped = false;
  const emergencyStop = () => {
    // Synchronous on purpose (process 'exit'): SIGQUIT is postgres's immediate shutdown.
    if (stopped) return;
    try {
      const pid = Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (pid > 0) process.kill(pid, 'SIGQUIT');
    } catch {
      // not running
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', emergencyStop);
  try {
    await initdb(dataDir, { superuser: SUPERUSER, auth: 'trust', runAs, noSync: true });
    await pgCtlStart(dataDir, {
      listenAddresses: opts.listen ?? '',
      port,
      socketDir: dir,
      logFile: path.join(dir, 'server.log'),
      runAs,
      // A throwaway server: durability is not what is tested, speed of the suite is.
      settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: '300' },
    });
  } catch (e) {
    emergencyStop();
    stopped = true;
    throw e;
  }
  const url = (db: string, tcpHost?: string) =>
    tcpHost ? `postgresql://${SUPERUSER}@${tcpHost}:${port}/${db}` : `postgresql://${SUPERUSER}@localhost:${port}/${db}?host=${encodeURIComponent(dir)}`;
  return {
    socketDir: dir,
    port,
    url,
    async createDatabase(name = `kiln_test_${process.pid}_${++dbCounter}`) {
      const c = new pg.Client({ connectionString: url('postgres') });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE "${name}"`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    async dispose() {
      if (stopped) return;
      try {
        await pgCtlStop(dataDir, { runAs });
      } finally {
        stopped = true;
        process.removeListener('exit', emergencyStop);
        await fs.rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Cluster tests: heartbeat every 300 ms, lost after 2 s (fast enough for a test to wait on). */
export const CLUSTER_TIMING = { heartbeatMs: 300, lostAfterMs: 2_000 } as const;

/**
 * Fencing tests: a node fences two heartbeats before the deadline (src/cluster/node-member.ts);
 * at 1 s heartbeats that is 2 s of margin between a node's fence and the others' sweep, which
 * a loaded test machine's timer lag does not eat.
 */
export const FENCE_TIMING = { heartbeatMs: 1_000, lostAfterMs: 6_000 } as const;

/**
 * One PostgreSQL for a test file: started before its tests, removed after them. Returns a
 * function that makes a fresh database on it (its URL).
 */
export function postgresPerFile(): () => Promise<string> {
  let server: TestPostgres | null = null;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.dispose();
  });
  return () => server!.createDatabase();
}

/**
 * A TCP path from one node to the PostgreSQL server that the test can cut: `cut()` resets every
 * connection through it and refuses new ones (the node sees the database go away, as when a
 * network partition or a database restart resets its connections, while the other nodes
 * keep theirs); `restore()` lets connections through again.
 */
export interface PgPath {
  /** URL of database `db` through this path. */
  url(db: string): string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function pgPath(server: TestPostgres): Promise<PgPath> {
  const socketPath = path.join(server.socketDir, `.s.PGSQL.${server.port}`);
  const open = new Set<net.Socket>();
  /** The node's (TCP) ends of `open`. */
  const clients = new Set<net.Socket>();
  let cut = false;
  const proxy = net.createServer((client) => {
    if (cut) return void client.destroy();
    const upstream = net.connect({ path: socketPath });
    open.add(client).add(upstream);
    clients.add(client);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
      clients.delete(client);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const port = (proxy.address() as net.AddressInfo).port;
  const cutAll = () => {
    cut = true;
    // The node's side is TCP: it sees a reset. The server's side is a unix socket: closed.
    for (const s of open) (clients.has(s) ? s.resetAndDestroy() : s.destroy());
    clients.clear();
    open.clear();
  };
  return {
    url: (db) => `postgresql://${SUPERUSER}@127.0.0.1:${port}/${db}`,
    cut: cutAll,
    restore() {
      cut = false;
    },
    async close() {
      cutAll();
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    },
  };
}

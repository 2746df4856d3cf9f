// PostgreSQL's server tools (postgresql-15 from Debian): initdb makes a cluster directory,
// pg_ctl starts and stops its server. Debian installs them under /usr/lib/postgresql/<ver>/bin,
// not on PATH, so the newest version there is used unless they are on PATH already.
// PostgreSQL refuses to run as root: when kiln is root these run as `runAs` through runuser.
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { findBinary } from '../util/find-binary.ts';
import { run, type RunResult } from '../util/process.ts';

const DEBIAN_ROOT = '/usr/lib/postgresql';

/** The directory holding initdb, pg_ctl and postgres; null when PostgreSQL is not installed. */
export async function postgresBinDir(): Promise<string | null> {
  try {
    const versions = (await fs.readdir(DEBIAN_ROOT)).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const dir = path.join(DEBIAN_ROOT, v, 'bin');
      if (await findBinary(path.join(dir, 'pg_ctl'))) return dir;
    }
  } catch {
    // no Debian layout: try PATH
  }
  const onPath = await findBinary('pg_ctl');
  return onPath ? path.dirname(onPath) : null;
}

async function binDir(): Promise<string> {
  const dir = await postgresBinDir();
  if (!dir) throw new KilnError('KILN_ERR_HOST_SETUP', 'PostgreSQL server tools are not installed (Debian: apt-get install postgresql-15)');
  return dir;
}

/** Runs a server tool, as `runAs` when we are root (postgres will not run as root). */
async function pgTool(tool: string, args: string[], runAs: string | undefined, timeoutMs: number): Promise<RunResult> {
  const bin = path.join(await binDir(), tool);
  const asOther = runAs !== undefined && process.getuid?.() === 0;
  return asOther ? run('runuser', ['-u', runAs, '--', bin, ...args], { timeoutMs }) : run(bin, args, { timeoutMs });
}

export interface InitdbOptions {
  /** The database superuser's name. */
  superuser: string;
  /** Authentication for local and host connections ('trust': anyone who reaches the socket). */
  auth: 'trust' | 'scram-sha-256';
  /** OS user the server files belong to and the tools run as (needed when kiln is root). */
  runAs?: string;
  /** Skip fsync while initialising (throwaway clusters). */
  noSync?: boolean;
}

/** `initdb`: a new cluster in `dataDir` (which must be empty or absent and owned by runAs). */
export async function initdb(dataDir: string, o: InitdbOptions): Promise<void> {
  const args = ['-D', dataDir, '-U', o.superuser, `--auth=${o.auth}`, '-E', 'UTF8', '--locale=C.UTF-8'];
  if (o.noSync) args.push('--no-sync');
  await pgTool('initdb', args, o.runAs, 120_000);
}

export interface ServerOptions {
  /** TCP addresses to listen on ('' for none: the unix socket only). */
  listenAddresses: string;
  port: number;
  /** Where the unix socket `.s.PGSQL.<port>` is made. */
  socketDir: string;
  logFile: string;
  runAs?: string;
  /** Extra `-c name=value` settings (e.g. fsync=off for throwaway clusters). */
  settings?: Record<string, string>;
  /** How long pg_ctl waits for the server to accept connections. */
  timeoutS?: number;
}

/** `pg_ctl start -w`: returns once the server accepts connections (or throws with its log). */
export async function pgCtlStart(dataDir: string, o: ServerOptions): Promise<void> {
  const settings = { listen_addresses: `'${o.listenAddresses}'`, port: String(o.port), unix_socket_directories: `'${o.socketDir}'`, ...o.settings };
  const opts = Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`).join(' ');
  const timeoutS = o.timeoutS ?? 60;
  try {
    await pgTool('pg_ctl', ['-D', dataDir, '-l', o.logFile, '-w', '-t', String(timeoutS), '-o', opts, 'start'], o.runAs, (timeoutS + 10) * 1000);
  } catch (e) {
    // pg_ctl's own stderr only says "could not start server": the reason is in the log.
    const log = await fs.readFile(o.logFile, 'utf8').catch(() => '');
    throw new KilnError('KILN_ERR_TOOL_FAILED', `${(e as Error).message}\n${log.slice(-2000)}`, { tool: 'pg_ctl' }, { cause: e });
  }
}

/** `pg_ctl stop -m fast -w`: rolls back open transactions, waits for the server to exit. */
export async function pgCtlStop(dataDir: string, o: { runAs?: string; timeoutS?: number } = {}): Promise<void> {
  const timeoutS = o.timeoutS ?? 60;
  await pgTool('pg_ctl', ['-D', dataDir, '-m', 'fast', '-w', '-t', String(timeoutS), 'stop'], o.runAs, (timeoutS + 10) * 1000);
}

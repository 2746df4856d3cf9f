// Functions in the store: a function (its name and current version), its versions (code
// and configuration are immutable per version: a PUT makes a new one), and its invocations.
// SQLite implementation beside the interface; it shares SqliteStore's database handle.
// PostgreSQL's is pg/function-repo.ts, with the same row codecs (exported here).
import type Database from 'better-sqlite3';
import { KilnError } from '../errors.ts';

export interface FunctionConfig {
  runtime: string;
  /** A custom runtime image (its runtime on PATH; kiln's shim is injected); null: kiln's own. */
  image?: string | null;
  handler: string;
  vcpus: number;
  memoryMib: number;
  env: Record<string, string>;
  timeoutMs: number;
  minInstances: number;
  maxInstances: number;
  concurrency: number;
  idleTimeoutS: number;
  queueSize: number;
}

export interface FunctionVersion extends FunctionConfig {
  function: string;
  version: number;
  /** 'inline' source, or an archive ('zip' | 'tar'); the bytes are in the state dir. */
  codeKind: 'inline' | 'zip' | 'tar';
  codeSha256: string;
  codeSize: number;
  /** Set when the code failed to load in a guest (syntax error, handler not found). */
  loadError: { type: string; message: string; stack: string | null } | null;
  createdAt: number;
}

export interface FunctionRecord {
  name: string;
  version: number;
  createdAt: number;
  updatedAt: number;
}

export type InvocationStatus = 'running' | 'ok' | 'error' | 'timeout' | 'oom' | 'crashed' | 'load_error' | 'failed';

export interface InvocationPhase {
  phase: string;
  ms: number;
}

export interface InvocationRecord {
  id: string;
  function: string;
  version: number;
  status: InvocationStatus;
  /** Cold: the instance was started for this call (code loaded first). */
  cold: boolean;
  /** Where the instance's VM came from: a warm pool, a boot (later: a snapshot restore). */
  source: 'pool' | 'boot' | 'restore' | null;
  instance: string | null;
  startedAt: number;
  durationMs: number | null;
  /** Time the handler ran in the guest, as the shim measured it. */
  guestMs: number | null;
  timeline: InvocationPhase[];
  error: { code: string; type?: string; message: string; stack?: string | null } | null;
  logs: string;
}

export interface FunctionStore {
  /**
   * `code`: the version's code bytes, stored with it in the same transaction. A cluster's
   * nodes do (any node may run any function: src/functions/function-service.ts); a single
   * host keeps code in its state dir only.
   */
  createFunction(v: FunctionVersion, code?: Buffer): Promise<void>;
  /** Adds a version (and its code, when given) and makes it current, atomically. */
  addVersion(v: FunctionVersion, code?: Buffer): Promise<void>;
  /** A version's code bytes as stored by createFunction/addVersion; null when not stored. */
  getCode(name: string, version: number): Promise<Buffer | null>;
  getFunction(name: string): Promise<FunctionRecord | null>;
  listFunctions(): Promise<FunctionRecord[]>;
  deleteFunction(name: string): Promise<void>;
  getVersion(name: string, version: number): Promise<FunctionVersion | null>;
  setLoadError(name: string, version: number, err: FunctionVersion['loadError']): Promise<void>;

  upsertInvocation(inv: InvocationRecord): Promise<void>;
  listInvocations(name: string, limit: number): Promise<InvocationRecord[]>;
  /** Keeps the newest `keep` invocations of a function. */
  pruneInvocations(name: string, keep: number): Promise<void>;
}

/** v4 (functions, issue #6). Self-contained: appended to MIGRATIONS. */
export const FUNCTIONS_MIGRATION = `
  CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
  );
  CREATE TABLE function_versions (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    config TEXT NOT NULL,
    code_kind TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    code_size INTEGER NOT NULL,
    load_error TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (function, version)
  );
  CREATE TABLE invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    cold INTEGER NOT NULL,
    source TEXT,
    instance TEXT,
    started_at REAL NOT NULL,
    duration_ms REAL,
    guest_ms REAL,
    timeline TEXT NOT NULL,
    error TEXT,
    logs TEXT NOT NULL
  );
  CREATE INDEX invocations_function ON invocations(function, started_at);
`;

type Row = Record<string, unknown>;

export function versionFromRow(r: Row): FunctionVersion {
  return {
    ...(JSON.parse(r.config as string) as FunctionConfig),
    function: r.function as string,
    version: r.version as number,
    codeKind: r.code_kind as FunctionVersion['codeKind'],
    codeSha256: r.code_sha256 as string,
    codeSize: r.code_size as number,
    loadError: r.load_error ? JSON.parse(r.load_error as string) : null,
    createdAt: r.created_at as number,
  };
}

export function configOf(v: FunctionVersion): FunctionConfig {
  const { runtime, image, handler, vcpus, memoryMib, env, timeoutMs, minInstances, maxInstances, concurrency, idleTimeoutS, queueSize } = v;
  return { runtime, image: image ?? null, handler, vcpus, memoryMib, env, timeoutMs, minInstances, maxInstances, concurrency, idleTimeoutS, queueSize };
}

export function invocationFromRow(r: Row): InvocationRecord {
  return {
    id: r.id as string,
    function: r.function as string,
    version: r.version as number,
    status: r.status as InvocationStatus,
    cold: r.cold === 1 || r.cold === true,
    source: (r.source as InvocationRecord['source']) ?? null,
    instance: (r.instance as string | null) ?? null,
    startedAt: r.started_at as number,
    durationMs: (r.duration_ms as number | null) ?? null,
    guestMs: (r.guest_ms as number | null) ?? null,
    timeline: JSON.parse(r.timeline as string),
    error: r.error ? JSON.parse(r.error as string) : null,
    logs: r.logs as string,
  };
}

export class SqliteFunctionStore implements FunctionStore {
  private readonly s;

  constructor(private readonly db: Database.Database) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      insertFn: p('INSERT INTO functions (name, version, created_at, updated_at) VALUES (?, ?, ?, ?)'),
      setCurrent: p('UPDATE functions SET version = ?, updated_at = ? WHERE name = ?'),
      insertVersion: p(`INSERT INTO function_versions (function, version, config, code_kind, code_sha256, code_size, load_error, created_at)
        VALUES (@function, @version, @config, @code_kind, @code_sha256, @code_size, @load_error, @created_at)`),
      getFn: p('SELECT * FROM functions WHERE name = ?'),
      listFn: p('SELECT * FROM functions ORDER BY name'),
      deleteFn: p('DELETE FROM functions WHERE name = ?'),
      getVersion: p('SELECT * FROM function_versions WHERE function = ? AND version = ?'),
      insertCode: p('INSERT INTO function_code (function, version, code) VALUES (?, ?, ?)'),
      getCode: p('SELECT code FROM function_code WHERE function = ? AND version = ?'),
      setLoadError: p('UPDATE function_versions SET load_error = ? WHERE function = ? AND version = ?'),
      upsertInv: p(`INSERT INTO invocations (id, function, version, status, cold, source, instance, started_at, duration_ms, guest_ms, timeline, error, logs)
        VALUES (@id, @function, @version, @status, @cold, @source, @instance, @started_at, @duration_ms, @guest_ms, @timeline, @error, @logs)
        ON CONFLICT(id) DO UPDATE SET status = excluded.status, cold = excluded.cold, source = excluded.source, instance = excluded.instance,
          duration_ms = excluded.duration_ms, guest_ms = excluded.guest_ms, timeline = excluded.timeline, error = excluded.error, logs = excluded.logs`),
      listInv: p('SELECT * FROM invocations WHERE function = ? ORDER BY started_at DESC LIMIT ?'),
      pruneInv: p(`DELETE FROM invocations WHERE function = ? AND id NOT IN
        (SELECT id FROM invocations WHERE function = ? ORDER BY started_at DESC LIMIT ?)`),
    };
  }

  private versionRow(v: FunctionVersion): Row {
    return {
      function: v.function,
      version: v.version,
      config: JSON.stringify(configOf(v)),
      code_kind: v.codeKind,
      code_sha256: v.codeSha256,
      code_size: v.codeSize,
      load_error: v.loadError ? JSON.stringify(v.loadError) : null,
      created_at: v.createdAt,
    };
  }

  async createFunction(v: FunctionVersion, code?: Buffer): Promise<void> {
    try {
      this.db.transaction(() => {
        this.s.insertFn.run(v.function, v.version, v.createdAt, v.createdAt);
        this.s.insertVersion.run(this.versionRow(v));
        if (code) this.s.insertCode.run(v.function, v.version, code);
      })();
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new KilnError('KILN_ERR_NAME_CONFLICT', `a function named ${JSON.stringify(v.function)} already exists (PUT /v1/functions/${v.function} deploys a new version)`);
      }
      throw e;
    }
  }

  async addVersion(v: FunctionVersion, code?: Buffer): Promise<void> {
    this.db.transaction(() => {
      this.s.insertVersion.run(this.versionRow(v));
      if (code) this.s.insertCode.run(v.function, v.version, code);
      this.s.setCurrent.run(v.version, v.createdAt, v.function);
    })();
  }

  async getCode(name: string, version: number): Promise<Buffer | null> {
    return ((this.s.getCode.get(name, version) as { code: Buffer } | undefined)?.code) ?? null;
  }

  async getFunction(name: string): Promise<FunctionRecord | null> {
    const r = this.s.getFn.get(name) as Row | undefined;
    return r ? { name: r.name as string, version: r.version as number, createdAt: r.created_at as number, updatedAt: r.updated_at as number } : null;
  }

  async listFunctions(): Promise<FunctionRecord[]> {
    return (this.s.listFn.all() as Row[]).map((r) => ({ name: r.name as string, version: r.version as number, createdAt: r.created_at as number, updatedAt: r.updated_at as number }));
  }

  async deleteFunction(name: string): Promise<void> {
    this.s.deleteFn.run(name);
  }

  async getVersion(name: string, version: number): Promise<FunctionVersion | null> {
    const r = this.s.getVersion.get(name, version) as Row | undefined;
    return r ? versionFromRow(r) : null;
  }

  async setLoadError(name: string, version: number, err: FunctionVersion['loadError']): Promise<void> {
    this.s.setLoadError.run(err ? JSON.stringify(err) : null, name, version);
  }

  async upsertInvocation(inv: InvocationRecord): Promise<void> {
    this.s.upsertInv.run({
      id: inv.id,
      function: inv.function,
      version: inv.version,
      status: inv.status,
      cold: inv.cold ? 1 : 0,
      source: inv.source,
      instance: inv.instance,
      started_at: inv.startedAt,
      duration_ms: inv.durationMs,
      guest_ms: inv.guestMs,
      timeline: JSON.stringify(inv.timeline),
      error: inv.error ? JSON.stringify(inv.error) : null,
      logs: inv.logs,
    });
  }

  async listInvocations(name: string, limit: number): Promise<InvocationRecord[]> {
    return (this.s.listInv.all(name, limit) as Row[]).map(invocationFromRow);
  }

  async pruneInvocations(name: string, keep: number): Promise<void> {
    this.s.pruneInv.run(name, name, keep);
  }
}

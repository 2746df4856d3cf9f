// Functions, versions and invocations on PostgreSQL (FunctionStore in ../function-store.ts).
import { configOf, invocationFromRow, versionFromRow, type FunctionRecord, type FunctionStore, type FunctionVersion, type InvocationRecord } from '../function-store.ts';
import type { Row } from '../rows.ts';
import { mapUnique, type PgDb, type Queryable } from './db.ts';

const fnFromRow = (r: Row): FunctionRecord => ({ name: r.name as string, version: r.version as number, createdAt: r.created_at as number, updatedAt: r.updated_at as number });

export class PgFunctionRepo implements FunctionStore {
  constructor(private readonly db: PgDb) {}

  private insertVersion(v: FunctionVersion, q: Queryable): Promise<number> {
    return this.db.exec(
      `INSERT INTO function_versions (function, version, config, code_kind, code_sha256, code_size, load_error, created_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [v.function, v.version, JSON.stringify(configOf(v)), v.codeKind, v.codeSha256, v.codeSize, v.loadError ? JSON.stringify(v.loadError) : null, v.createdAt],
      q,
    );
  }

  private async insertCode(v: FunctionVersion, code: Buffer | undefined, q: Queryable): Promise<void> {
    if (code) await this.db.exec('INSERT INTO function_code (function, version, code) VALUES ($1, $2, $3)', [v.function, v.version, code], q);
  }

  async createFunction(v: FunctionVersion, code?: Buffer): Promise<void> {
    await mapUnique(
      () =>
        this.db.tx(async (c) => {
          await this.db.exec('INSERT INTO functions (name, version, created_at, updated_at) VALUES ($1, $2, $3, $3)', [v.function, v.version, v.createdAt], c);
          await this.insertVersion(v, c);
          await this.insertCode(v, code, c);
        }),
      {
        functions_pkey: ['KILN_ERR_NAME_CONFLICT', `a function named ${JSON.stringify(v.function)} already exists (PUT /v1/functions/${v.function} deploys a new version)`],
      },
    );
  }

  async addVersion(v: FunctionVersion, code?: Buffer): Promise<void> {
    await this.db.tx(async (c) => {
      await this.insertVersion(v, c);
      await this.insertCode(v, code, c);
      await this.db.exec('UPDATE functions SET version = $1, updated_at = $2 WHERE name = $3', [v.version, v.createdAt, v.function], c);
    });
  }

  async getFunction(name: string): Promise<FunctionRecord | null> {
    const r = await this.db.row('SELECT * FROM functions WHERE name = $1', [name]);
    return r ? fnFromRow(r) : null;
  }

  async listFunctions(): Promise<FunctionRecord[]> {
    return (await this.db.rows('SELECT * FROM functions ORDER BY name')).map(fnFromRow);
  }

  async deleteFunction(name: string): Promise<void> {
    await this.db.exec('DELETE FROM functions WHERE name = $1', [name]);
  }

  async getCode(name: string, version: number): Promise<Buffer | null> {
    return ((await this.db.row('SELECT code FROM function_code WHERE function = $1 AND version = $2', [name, version]))?.code as Buffer | undefined) ?? null;
  }

  async getVersion(name: string, version: number): Promise<FunctionVersion | null> {
    const r = await this.db.row('SELECT * FROM function_versions WHERE function = $1 AND version = $2', [name, version]);
    return r ? versionFromRow(r) : null;
  }

  async setLoadError(name: string, version: number, err: FunctionVersion['loadError']): Promise<void> {
    await this.db.exec('UPDATE function_versions SET load_error = $1 WHERE function = $2 AND version = $3', [err ? JSON.stringify(err) : null, name, version]);
  }

  async upsertInvocation(inv: InvocationRecord): Promise<void> {
    await this.db.exec(
      `INSERT INTO invocations (id, function, version, status, cold, source, instance, started_at, duration_ms, guest_ms, timeline, error, logs)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
       ON CONFLICT (id) DO UPDATE SET status = excluded.status, cold = excluded.cold, source = excluded.source, instance = excluded.instance,
         duration_ms = excluded.duration_ms, guest_ms = excluded.guest_ms, timeline = excluded.timeline, error = excluded.error, logs = excluded.logs`,
      [
        inv.id, inv.function, inv.version, inv.status, inv.cold, inv.source, inv.instance, inv.startedAt, inv.durationMs, inv.guestMs,
        JSON.stringify(inv.timeline), inv.error ? JSON.stringify(inv.error) : null,
        // PostgreSQL text cannot hold NUL; a guest's log may.
        inv.logs.replaceAll('\u0000', '\uFFFD'),
      ],
    );
  }

  async listInvocations(name: string, limit: number): Promise<InvocationRecord[]> {
    return (await this.db.rows('SELECT * FROM invocations WHERE function = $1 ORDER BY started_at DESC LIMIT $2', [name, limit])).map(invocationFromRow);
  }

  async pruneInvocations(name: string, keep: number): Promise<void> {
    await this.db.exec(
      'DELETE FROM invocations WHERE function = $1 AND id NOT IN (SELECT id FROM invocations WHERE function = $1 ORDER BY started_at DESC LIMIT $2)',
      [name, keep],
    );
  }
}

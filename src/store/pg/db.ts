// The PostgreSQL connection seam every pg/ repository shares: a pg.Pool whose jsonb values come
// back as JSON text and int8 as numbers (so rows decode with the same codecs as SQLite's,
// src/store/rows.ts), transactions, column-level updates and constraint-error mapping.
// Library: `pg` (node-postgres): the reference PostgreSQL client for Node, pure JS (no native
// build), with a pool, parameterised queries and unix-socket support.
import pg from 'pg';
import { KilnError, type ErrorCode } from '../../errors.ts';
import type { Row } from '../rows.ts';

const JSON_OID = 114;
const JSONB_OID = 3802;
const INT8_OID = 20;

const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === JSON_OID || oid === JSONB_OID) return (v: string) => v;
    // Sequences and byte counts: exact as JS numbers below 2^53, which kiln's never reach.
    if (oid === INT8_OID) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
} as unknown as pg.CustomTypesConfig;

/** Keys of the transaction-scoped advisory locks that serialise cluster-wide decisions. */
export const LOCKS = {
  /** Address leases: one picker at a time sees every lease (the unique index is the backstop). */
  ipLease: 0x6b696c6e_01,
  /** Event appends: seq order is commit order, so a reader paging by seq never skips one. */
  events: 0x6b696c6e_02,
  /** Schema migrations: one kilnd migrates, the others wait and find it done. */
  migrate: 0x6b696c6e_03,
  /** Placement: one API decides at a time, against capacity that includes the last decision. */
  placement: 0x6b696c6e_04,
  /** Node subnet leases: one node picks at a time, seeing every lease. */
  subnetLease: 0x6b696c6e_05,
} as const;

export type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

export class PgDb {
  readonly pool: pg.Pool;

  constructor(url: string, opts: { max?: number; min?: number } = {}) {
    // `min`: connections kept open however long they are idle (pg closes idle ones after 10 s);
    // three, the most one request reads at once (the API role's create: image, VMs, nodes).
    // An API role between creates, or a node between heartbeats' bursts, otherwise reconnects
    // (a new PostgreSQL backend process, and its authentication) on the next request
    // (bench/cluster: a store read after 11 s idle, with and without).
    this.pool = new pg.Pool({ connectionString: url, max: opts.max ?? 10, min: opts.min ?? 3, types, application_name: 'kiln' });
    // An idle client's error (server restart) must not crash kilnd: the next query reconnects.
    this.pool.on('error', () => {});
  }

  async rows(sql: string, params: unknown[] = [], q: Queryable = this.pool): Promise<Row[]> {
    return (await q.query(sql, params)).rows as Row[];
  }

  async row(sql: string, params: unknown[] = [], q: Queryable = this.pool): Promise<Row | null> {
    return ((await q.query(sql, params)).rows[0] as Row | undefined) ?? null;
  }

  async exec(sql: string, params: unknown[] = [], q: Queryable = this.pool): Promise<number> {
    return (await q.query(sql, params)).rowCount ?? 0;
  }

  /** Runs `fn` in one transaction on one connection: committed when it resolves, rolled back when it throws. */
  async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => {});
      throw e;
    } finally {
      c.release();
    }
  }

  /**
   * One UPDATE of only the given columns (plus `extra`), optionally only while `state` is one
   * of `states` (compare-and-set). The row as written, or null when no row matched.
   */
  async updateColumns(
    table: string,
    id: string,
    cols: [string, unknown][],
    extra: Row = {},
    states?: readonly string[],
    opts: { byIdOrName?: boolean } = {},
  ): Promise<Row | null> {
    const all = [...cols.filter(([c]) => !(c in extra)), ...Object.entries(extra)];
    const params: unknown[] = all.map(([, v]) => v);
    const set = all.length ? all.map(([c], i) => `${c} = $${i + 1}`).join(', ') : 'id = id';
    params.push(id);
    const p = `$${params.length}`;
    // By id or name in the same statement (one round trip): the id wins over another row's name.
    const target = opts.byIdOrName ? `(SELECT id FROM ${table} WHERE id = ${p} OR name = ${p} ORDER BY (id = ${p}) DESC LIMIT 1)` : p;
    let sql = `UPDATE ${table} SET ${set} WHERE id = ${target}`;
    if (states) {
      params.push([...states]);
      sql += ` AND state = ANY($${params.length}::text[])`;
    }
    return this.row(`${sql} RETURNING *`, params);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** PostgreSQL's unique_violation on `constraint` (any unique constraint when omitted). */
export function isUniqueViolation(e: unknown, constraint?: string): boolean {
  const err = e as { code?: string; constraint?: string };
  return err?.code === '23505' && (constraint === undefined || err.constraint === constraint);
}

/** Runs `fn`, turning a unique violation of one of `map`'s constraints into its KilnError. */
export async function mapUnique<T>(fn: () => Promise<T>, map: Record<string, [ErrorCode, string]>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const hit = isUniqueViolation(e) ? map[(e as { constraint: string }).constraint] : undefined;
    if (hit) throw new KilnError(hit[0], hit[1]);
    throw e;
  }
}

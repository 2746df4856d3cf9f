// Events on PostgreSQL. Appends take a transaction-scoped advisory lock so that sequence order
// is commit order across every kilnd writing: a reader paging by `afterSeq` (SSE resume)
// never sees seq n+1 before n commits, which a bare bigserial would allow.
import type { EventRecord } from '../store.ts';
import { LOCKS, type PgDb } from './db.ts';
import type { Row } from '../rows.ts';

const fromRow = (r: Row): EventRecord => ({
  seq: r.seq as number,
  ts: r.ts as number,
  type: r.type as string,
  vmId: (r.vm_id as string | null) ?? null,
  data: JSON.parse(r.data as string),
});

export class PgEventRepo {
  constructor(private readonly db: PgDb) {}

  async appendEvent(e: Omit<EventRecord, 'seq'>): Promise<EventRecord> {
    return this.db.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [LOCKS.events]);
      const row = await this.db.row('INSERT INTO events (ts, type, vm_id, data) VALUES ($1, $2, $3, $4) RETURNING seq', [e.ts, e.type, e.vmId, JSON.stringify(e.data)], c);
      return { ...e, seq: row!.seq as number };
    });
  }

  async listEvents(opts: { vmId?: string; afterSeq?: number; limit?: number }): Promise<EventRecord[]> {
    const rows = await this.db.rows('SELECT * FROM events WHERE seq > $1 AND ($2::text IS NULL OR vm_id = $2) ORDER BY seq ASC LIMIT $3', [
      opts.afterSeq ?? 0,
      opts.vmId ?? null,
      opts.limit ?? 1000,
    ]);
    return rows.map(fromRow);
  }

  async firstEventSeq(): Promise<number | null> {
    return ((await this.db.row('SELECT MIN(seq) AS seq FROM events'))?.seq as number | null) ?? null;
  }

  async lastEventSeq(): Promise<number | null> {
    return ((await this.db.row('SELECT MAX(seq) AS seq FROM events'))?.seq as number | null) ?? null;
  }

  async pruneEvents(opts: { beforeTs?: number; vmId?: string; keepPerVm?: number; keepTotal?: number }): Promise<number> {
    let n = 0;
    if (opts.beforeTs !== undefined) n += await this.db.exec('DELETE FROM events WHERE ts < $1', [opts.beforeTs]);
    if (opts.vmId !== undefined && opts.keepPerVm !== undefined) {
      n += await this.db.exec('DELETE FROM events WHERE vm_id = $1 AND seq <= (SELECT seq FROM events WHERE vm_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)', [
        opts.vmId,
        opts.keepPerVm,
      ]);
    }
    if (opts.keepTotal !== undefined) {
      n += await this.db.exec('DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET $1)', [opts.keepTotal]);
    }
    return n;
  }
}

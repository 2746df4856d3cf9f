// Cluster membership on PostgreSQL: node registration, compare-and-set heartbeats, and the
// lost-node sweep that moves a silent node's VMs to `lost` in the same transaction.
import { LOSABLE_STATES, nodeFromRow } from '../rows.ts';
import type { LostNode, NodeCapacity, NodeCommitted, NodeRecord, NodeRegistration, NodeStore, VmState } from '../store.ts';
import { LOCKS, mapUnique, type PgDb } from './db.ts';

export class PgNodeRepo implements NodeStore {
  constructor(private readonly db: PgDb) {}

  async registerNode(n: NodeRegistration, now: number): Promise<NodeRecord> {
    const row = await mapUnique(
      () =>
        this.db.row(
          `INSERT INTO nodes (id, name, url, e2b_url, state, incarnation, capacity, registered_at, heartbeat_at, lost_at)
           VALUES ($1, $2, $3, $6, 'ready', 1, $4, $5, $5, NULL)
           ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, e2b_url = excluded.e2b_url, state = 'ready', incarnation = nodes.incarnation + 1,
             capacity = excluded.capacity, registered_at = excluded.registered_at, heartbeat_at = excluded.heartbeat_at, lost_at = NULL
           RETURNING *`,
          [n.id, n.name, n.url, JSON.stringify(n.capacity), now, n.e2bUrl ?? null],
        ),
      { nodes_name_key: ['KILN_ERR_NAME_CONFLICT', `a node named ${JSON.stringify(n.name)} is already registered`] },
    );
    return nodeFromRow(row!);
  }

  async heartbeatNode(id: string, incarnation: number, capacity: NodeCapacity, now: number): Promise<NodeRecord | null> {
    const row = await this.db.row(
      `UPDATE nodes SET heartbeat_at = $1, capacity = $2 WHERE id = $3 AND state = 'ready' AND incarnation = $4 RETURNING *`,
      [now, JSON.stringify(capacity), id, incarnation],
    );
    return row ? nodeFromRow(row) : null;
  }

  async getNode(id: string): Promise<NodeRecord | null> {
    const row = await this.db.row('SELECT * FROM nodes WHERE id = $1', [id]);
    return row ? nodeFromRow(row) : null;
  }

  async listNodes(): Promise<NodeRecord[]> {
    return (await this.db.rows('SELECT * FROM nodes ORDER BY name')).map(nodeFromRow);
  }

  async listNodesWithCommitted(states: readonly VmState[]): Promise<NodeCommitted[]> {
    // SUM of integer is bigint (int8): read back as a number (db.ts).
    const rows = await this.db.rows(
      `SELECT n.*, COALESCE(c.vcpus, 0) AS committed_vcpus, COALESCE(c.memory_mib, 0) AS committed_memory_mib FROM nodes n
       LEFT JOIN (SELECT node_id, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib FROM vms
                  WHERE node_id IS NOT NULL AND state = ANY($1::text[]) GROUP BY node_id) c ON c.node_id = n.id
       ORDER BY n.name`,
      [[...states]],
    );
    return rows.map((r) => ({ node: nodeFromRow(r), committed: { vcpus: r.committed_vcpus as number, memoryMib: r.committed_memory_mib as number } }));
  }

  async deleteNode(id: string): Promise<void> {
    await this.db.tx(async (c) => {
      await this.db.exec('DELETE FROM node_subnets WHERE node_id = $1', [id], c);
      await this.db.exec('DELETE FROM nodes WHERE id = $1', [id], c);
    });
  }

  async leaseNodeSubnet(nodeId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null> {
    return this.db.tx(async (c) => {
      // One picker at a time sees every lease; the primary key on subnet is the backstop.
      await c.query('SELECT pg_advisory_xact_lock($1)', [LOCKS.subnetLease]);
      const held = await this.db.row('SELECT subnet FROM node_subnets WHERE node_id = $1', [nodeId], c);
      if (held) return held.subnet as string;
      const taken = new Set((await this.db.rows('SELECT subnet FROM node_subnets', [], c)).map((r) => r.subnet as string));
      const subnet = pick(taken);
      if (subnet !== null) await this.db.exec('INSERT INTO node_subnets (subnet, node_id, leased_at) VALUES ($1, $2, $3)', [subnet, nodeId, Date.now()], c);
      return subnet;
    });
  }

  async markNodesLost(heartbeatBefore: number, now: number): Promise<LostNode[]> {
    return this.db.tx(async (c) => {
      // SKIP LOCKED: two API instances sweeping at once split the work instead of waiting.
      const lost = await this.db.rows(
        `UPDATE nodes SET state = 'lost', lost_at = $1 WHERE id IN (
           SELECT id FROM nodes WHERE state = 'ready' AND heartbeat_at < $2 FOR UPDATE SKIP LOCKED)
         RETURNING id`,
        [now, heartbeatBefore],
        c,
      );
      const out: LostNode[] = [];
      for (const { id } of lost) {
        const vms = await this.db.rows(
          `UPDATE vms SET state = 'lost', state_reason = $1, updated_at = $2 WHERE node_id = $3 AND state = ANY($4::text[]) RETURNING id`,
          [`node ${id} stopped heartbeating`, now, id, [...LOSABLE_STATES]],
          c,
        );
        const pulls = await this.db.rows(
          `DELETE FROM images WHERE state = 'pulling' AND id IN (SELECT image_id FROM image_copies WHERE node_id = $1 AND state = 'fetching') RETURNING id`,
          [id], c,
        );
        await this.db.rows(`DELETE FROM image_copies WHERE node_id = $1 AND state = 'fetching'`, [id], c);
        out.push({ node: id as string, vms: vms.map((r) => r.id as string).sort(), pulls: pulls.map((r) => r.id as string).sort() });
      }
      return out.sort((a, b) => a.node.localeCompare(b.node));
    });
  }
}

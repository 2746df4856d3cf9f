// SQLite implementation of the store: one file in the state dir, WAL, statements prepared
// once, schema versioned with PRAGMA user_version.
import Database from 'better-sqlite3';
import { KilnError } from '../errors.ts';
import { SqliteFunctionStore, type FunctionStore } from './function-store.ts';
import { MIGRATIONS } from './migrations.ts';
import {
  LOSABLE_STATES, nodeFromRow, containerFromRow, containerToRow, imageCopyFilter, imageCopyFromRow, imageCopyParams, imageFromRow, imageToRow, patchColumns, snapshotFromRow, templateFromRow, templateToRow,
  vmFromRow, vmToRow, volumeFromRow, type Row,
} from './rows.ts';
import type { ContainerRecord, EventRecord, ImageCopy, ImageRecord, LostNode, NodeCapacity, NodeCommitted, NodeRecord, NodeRegistration, PhaseRecord, SnapshotRecord, Store, TemplateRecord, VmRecord, VmState, VolumeRecord } from './store.ts';

/** Names are UNIQUE columns: a clash is the API's name conflict, not an internal error. */
function uniqueName(insert: () => unknown, message: string): void {
  try {
    insert();
  } catch (e) {
    if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new KilnError('KILN_ERR_NAME_CONFLICT', message);
    throw e;
  }
}

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly stmt;
  readonly functions: FunctionStore;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    this.functions = new SqliteFunctionStore(this.db);
    const p = (sql: string) => this.db.prepare(sql);
    this.stmt = {
      insertVm: p(`INSERT INTO vms (id, name, state, state_reason, image_id, vcpus, memory_mib, kernel_args, cmd, env,
        network, ip, ports, readiness, agent_token, agent, health, health_reason, backend, accelerator, pid, boot_count, console_offset, exit_code, volumes, process, classic, egress, node_id, labels, created_at, updated_at) VALUES (@id, @name, @state, @state_reason,
        @image_id, @vcpus, @memory_mib, @kernel_args, @cmd, @env, @network, @ip, @ports, @readiness, @agent_token, @agent, @health, @health_reason, @backend, @accelerator, @pid, @boot_count, @console_offset, @exit_code,
        @volumes, @process, @classic, @egress, @node_id, @labels, @created_at, @updated_at)`),
      getVm: p('SELECT * FROM vms WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1'),
      listVms: p('SELECT * FROM vms ORDER BY created_at, id'),
      deleteVm: p('DELETE FROM vms WHERE id = ?'),
      leasedIps: p('SELECT ip FROM vms WHERE ip IS NOT NULL'),
      setIp: p('UPDATE vms SET ip = ? WHERE id = ?'),
      insertPort: p('INSERT INTO published_ports (proto, host_port, vm_id, guest_port) VALUES (?, ?, ?, ?)'),
      countVmsUsingImage: p('SELECT COUNT(*) AS n FROM vms WHERE image_id = ?'),
      insertImage: p(`INSERT INTO images (id, name, digest, format, path, size_bytes, config, created_at, state, source, manifest_digest, layers, builder)
        VALUES (@id, @name, @digest, @format, @path, @size_bytes, @config, @created_at, @state, @source, @manifest_digest, @layers, @builder)`),
      insertVolume: p('INSERT INTO volumes (id, name, size_mib, path, created_at, node_id) VALUES (@id, @name, @size_mib, @path, @created_at, @node_id)'),
      getVolume: p('SELECT * FROM volumes WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1'),
      listVolumes: p('SELECT * FROM volumes ORDER BY created_at, id'),
      deleteVolume: p('DELETE FROM volumes WHERE id = ?'),
      insertContainer: p(`INSERT INTO containers (id, image, restart, auto_remove, restart_count, backoff_step, user_stopped, handled_boot, restart_at, created_at)
        VALUES (@id, @image, @restart, @auto_remove, @restart_count, @backoff_step, @user_stopped, @handled_boot, @restart_at, @created_at)`),
      getContainer: p('SELECT * FROM containers WHERE id = ?'),
      listContainers: p('SELECT * FROM containers ORDER BY created_at, id'),
      getImage: p('SELECT * FROM images WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1'),
      getImageByDigest: p('SELECT * FROM images WHERE digest = ?'),
      listImages: p('SELECT * FROM images ORDER BY created_at, id'),
      deleteImage: p('DELETE FROM images WHERE id = ?'),
      upsertPhase: p(`INSERT INTO phases (vm_id, boot, name, started_at, ended_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (vm_id, boot, name) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at`),
      listPhases: p('SELECT * FROM phases WHERE vm_id = ? AND boot = ? ORDER BY started_at, rowid'),
      insertEvent: p('INSERT INTO events (ts, type, vm_id, data) VALUES (?, ?, ?, ?)'),
      pruneEventsByAge: p('DELETE FROM events WHERE ts < ?'),
      pruneEventsOfVm: p(`DELETE FROM events WHERE vm_id = @vm AND seq <= (
        SELECT seq FROM events WHERE vm_id = @vm ORDER BY seq DESC LIMIT 1 OFFSET @keep)`),
      pruneEventsTotal: p('DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)'),
      listEvents: p(`SELECT * FROM events WHERE seq > @after AND (@vm IS NULL OR vm_id = @vm)
        ORDER BY seq ASC LIMIT @limit`),
      firstEventSeq: p('SELECT MIN(seq) AS seq FROM events'),
      lastEventSeq: p('SELECT MAX(seq) AS seq FROM events'),
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new KilnError(
        'KILN_ERR_HOST_SETUP',
        `state database schema v${current} is newer than this kiln (v${MIGRATIONS.length}); upgrade kiln`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  async insertVm(vm: VmRecord): Promise<void> {
    this.db.transaction(() => {
      uniqueName(() => this.stmt.insertVm.run(vmToRow(vm)), `a VM named ${JSON.stringify(vm.name)} already exists`);
      for (const p of vm.ports) {
        try {
          this.stmt.insertPort.run(p.proto, p.hostPort, vm.id, p.guestPort);
        } catch (e) {
          if ((e as { code?: string }).code !== 'SQLITE_CONSTRAINT_PRIMARYKEY') throw e;
          throw new KilnError('KILN_ERR_PORT_CONFLICT', `host port ${p.proto}/${p.hostPort} is already published by another VM`);
        }
      }
    })();
  }

  async assignIp(vmId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null> {
    return this.db.transaction(() => {
      const taken = new Set((this.stmt.leasedIps.all() as { ip: string }[]).map((r) => r.ip));
      const ip = pick(taken);
      if (ip !== null) this.stmt.setIp.run(ip, vmId);
      return ip;
    }).immediate();
  }

  async updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord> {
    const row = this.updateColumns('vms', this.vmIdOf(id), patchColumns(patch, vmToRow, ['id', 'createdAt']), { updated_at: Date.now() });
    if (!row) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${id}`);
    return vmFromRow(row);
  }

  async transitionVm(id: string, from: readonly VmState[], patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord | null> {
    const row = this.updateColumns('vms', id, patchColumns(patch, vmToRow, ['id', 'createdAt']), { updated_at: Date.now() }, from);
    return row ? vmFromRow(row) : null;
  }

  /** The id of the VM named or identified by `idOrName` (updates accept either, as getVm does). */
  private vmIdOf(idOrName: string): string {
    return ((this.stmt.getVm.get(idOrName, idOrName, idOrName) as Row | undefined)?.id as string | undefined) ?? idOrName;
  }

  /**
   * One UPDATE of only the given columns, optionally only while `state` is one of `states`
   * (compare-and-set); the row as written, or null when no row matched. Statements are
   * prepared once per column set.
   */
  private updateColumns(table: string, id: string, cols: [string, unknown][], extra: Row = {}, states?: readonly string[]): Row | null {
    const all = [...cols.filter(([c]) => !(c in extra)), ...Object.entries(extra)];
    const guard = states ? ` AND state IN (${states.map(() => '?').join(', ') || 'NULL'})` : '';
    const set = all.length ? all.map(([c]) => `${c} = ?`).join(', ') : 'id = id';
    const sql = `UPDATE ${table} SET ${set} WHERE id = ?${guard} RETURNING *`;
    let stmt = this.updates.get(sql);
    if (!stmt) this.updates.set(sql, (stmt = this.db.prepare(sql)));
    return (stmt.get(...all.map(([, v]) => v), id, ...(states ?? [])) as Row | undefined) ?? null;
  }

  private readonly updates = new Map<string, Database.Statement>();

  async getVm(idOrName: string): Promise<VmRecord | null> {
    const row = this.stmt.getVm.get(idOrName, idOrName, idOrName) as Row | undefined;
    return row ? vmFromRow(row) : null;
  }

  async listVms(): Promise<VmRecord[]> {
    return (this.stmt.listVms.all() as Row[]).map(vmFromRow);
  }

  async deleteVm(id: string): Promise<void> {
    this.stmt.deleteVm.run(id);
  }

  async countVmsUsingImage(imageId: string): Promise<number> {
    return (this.stmt.countVmsUsingImage.get(imageId) as { n: number }).n;
  }

  async insertImage(image: ImageRecord): Promise<void> {
    uniqueName(() => this.stmt.insertImage.run(imageToRow(image)), `an image named ${JSON.stringify(image.name)} already exists`);
  }

  async updateImage(id: string, patch: Partial<Omit<ImageRecord, 'id'>>): Promise<ImageRecord> {
    const target = ((this.stmt.getImage.get(id, id, id) as Row | undefined)?.id as string | undefined) ?? id;
    const row = this.updateColumns('images', target, patchColumns(patch, imageToRow, ['id']));
    if (!row) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${id}`);
    return imageFromRow(row);
  }

  async insertVolume(v: VolumeRecord): Promise<void> {
    uniqueName(
      () => this.stmt.insertVolume.run({ id: v.id, name: v.name, size_mib: v.sizeMib, path: v.path, created_at: v.createdAt, node_id: v.nodeId ?? null }),
      `a volume named ${JSON.stringify(v.name)} already exists`,
    );
  }

  async getVolume(idOrName: string): Promise<VolumeRecord | null> {
    const row = this.stmt.getVolume.get(idOrName, idOrName, idOrName) as Row | undefined;
    return row ? volumeFromRow(row) : null;
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    return (this.stmt.listVolumes.all() as Row[]).map(volumeFromRow);
  }

  async deleteVolume(id: string): Promise<void> {
    this.stmt.deleteVolume.run(id);
  }

  async insertContainer(c: ContainerRecord): Promise<void> {
    this.stmt.insertContainer.run(containerToRow(c));
  }

  async updateContainer(id: string, patch: Partial<Omit<ContainerRecord, 'id' | 'createdAt'>>): Promise<ContainerRecord> {
    const row = this.updateColumns('containers', id, patchColumns(patch, containerToRow, ['id', 'createdAt']));
    if (!row) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${id}`);
    return containerFromRow(row);
  }

  async getContainer(id: string): Promise<ContainerRecord | null> {
    const row = this.stmt.getContainer.get(id) as Row | undefined;
    return row ? containerFromRow(row) : null;
  }

  async listContainers(): Promise<ContainerRecord[]> {
    return (this.stmt.listContainers.all() as Row[]).map(containerFromRow);
  }

  async getImage(idOrName: string): Promise<ImageRecord | null> {
    const row = this.stmt.getImage.get(idOrName, idOrName, idOrName) as Row | undefined;
    return row ? imageFromRow(row) : null;
  }

  async getImageByDigest(digest: string): Promise<ImageRecord | null> {
    const row = this.stmt.getImageByDigest.get(digest) as Row | undefined;
    return row ? imageFromRow(row) : null;
  }

  async listImages(): Promise<ImageRecord[]> {
    return (this.stmt.listImages.all() as Row[]).map(imageFromRow);
  }

  async deleteImage(id: string): Promise<void> {
    this.stmt.deleteImage.run(id);
  }

  async putImageCopy(c: ImageCopy): Promise<void> {
    this.db.prepare(`INSERT INTO image_copies (image_id, node_id, path, size_bytes, sha256, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (image_id, node_id) DO UPDATE SET path = excluded.path, size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
      state = excluded.state, updated_at = excluded.updated_at`).run(...imageCopyParams(c));
  }

  async listImageCopies(filter: { imageId?: string; nodeId?: string }): Promise<ImageCopy[]> {
    const { where, params } = imageCopyFilter(filter);
    return (this.db.prepare(`SELECT * FROM image_copies ${where} ORDER BY updated_at, image_id, node_id`).all(...params) as Row[]).map(imageCopyFromRow);
  }

  async deleteImageCopy(imageId: string, nodeId: string): Promise<void> {
    this.db.prepare('DELETE FROM image_copies WHERE image_id = ? AND node_id = ?').run(imageId, nodeId);
  }

  async recordPhase(p: PhaseRecord): Promise<void> {
    this.stmt.upsertPhase.run(p.vmId, p.boot, p.name, p.startedAt, p.endedAt);
  }

  async listPhases(vmId: string, boot: number): Promise<PhaseRecord[]> {
    return (this.stmt.listPhases.all(vmId, boot) as Row[]).map((r) => ({
      vmId: r.vm_id as string,
      boot: r.boot as number,
      name: r.name as string,
      startedAt: r.started_at as number,
      endedAt: (r.ended_at as number | null) ?? null,
    }));
  }

  async appendEvent(e: Omit<EventRecord, 'seq'>): Promise<EventRecord> {
    const info = this.stmt.insertEvent.run(e.ts, e.type, e.vmId, JSON.stringify(e.data));
    return { ...e, seq: Number(info.lastInsertRowid) };
  }

  async firstEventSeq(): Promise<number | null> {
    return ((this.stmt.firstEventSeq.get() as { seq: number | null }).seq) ?? null;
  }

  async lastEventSeq(): Promise<number | null> {
    return ((this.stmt.lastEventSeq.get() as { seq: number | null }).seq) ?? null;
  }

  async pruneEvents(opts: { beforeTs?: number; vmId?: string; keepPerVm?: number; keepTotal?: number }): Promise<number> {
    let n = 0;
    if (opts.beforeTs !== undefined) n += this.stmt.pruneEventsByAge.run(opts.beforeTs).changes;
    if (opts.vmId !== undefined && opts.keepPerVm !== undefined) n += this.stmt.pruneEventsOfVm.run({ vm: opts.vmId, keep: opts.keepPerVm }).changes;
    if (opts.keepTotal !== undefined) n += this.stmt.pruneEventsTotal.run(opts.keepTotal).changes;
    return n;
  }

  async listEvents(opts: { vmId?: string; afterSeq?: number; limit?: number }): Promise<EventRecord[]> {
    const rows = this.stmt.listEvents.all({
      after: opts.afterSeq ?? 0,
      vm: opts.vmId ?? null,
      limit: opts.limit ?? 1000,
    }) as Row[];
    return rows.map((r) => ({
      seq: r.seq as number,
      ts: r.ts as number,
      type: r.type as string,
      vmId: (r.vm_id as string | null) ?? null,
      data: JSON.parse(r.data as string),
    }));
  }

  // ---- snapshots and templates (v4) ----

  private snapStmt?: ReturnType<SqliteStore['prepareSnapshotStatements']>;

  private prepareSnapshotStatements() {
    const p = (sql: string) => this.db.prepare(sql);
    return {
      insertSnapshot: p(`INSERT INTO snapshots (id, source_vm_id, template_id, path, meta, size_bytes, created_at, node_id)
        VALUES (@id, @source_vm_id, @template_id, @path, @meta, @size_bytes, @created_at, @node_id)`),
      getSnapshot: p('SELECT * FROM snapshots WHERE id = ?'),
      listSnapshots: p('SELECT * FROM snapshots ORDER BY created_at, id'),
      deleteSnapshot: p('DELETE FROM snapshots WHERE id = ?'),
      linkClone: p('INSERT OR REPLACE INTO vm_snapshots (vm_id, snapshot_id) VALUES (?, ?)'),
      listClones: p('SELECT vm_id FROM vm_snapshots WHERE snapshot_id = ? ORDER BY vm_id'),
      snapshotOfVm: p('SELECT snapshot_id FROM vm_snapshots WHERE vm_id = ?'),
      insertTemplate: p(`INSERT INTO templates (id, image_id, vcpus, memory_mib, key, state, state_reason, snapshot_id, created_at, updated_at, node_id)
        VALUES (@id, @image_id, @vcpus, @memory_mib, @key, @state, @state_reason, @snapshot_id, @created_at, @updated_at, @node_id)`),
      getTemplate: p('SELECT * FROM templates WHERE id = ?'),
      getTemplateByKey: p('SELECT * FROM templates WHERE key = ?'),
      listTemplates: p('SELECT * FROM templates ORDER BY created_at, id'),
      deleteTemplate: p('DELETE FROM templates WHERE id = ?'),
    };
  }

  private get snap() {
    return (this.snapStmt ??= this.prepareSnapshotStatements());
  }

  async insertSnapshot(s: SnapshotRecord): Promise<void> {
    this.snap.insertSnapshot.run({
      id: s.id, source_vm_id: s.sourceVmId, template_id: s.templateId, path: s.path,
      meta: JSON.stringify(s.meta), size_bytes: s.sizeBytes, created_at: s.createdAt, node_id: s.nodeId ?? null,
    });
  }

  async getSnapshot(id: string): Promise<SnapshotRecord | null> {
    const row = this.snap.getSnapshot.get(id) as Row | undefined;
    return row ? snapshotFromRow(row) : null;
  }

  async listSnapshots(): Promise<SnapshotRecord[]> {
    return (this.snap.listSnapshots.all() as Row[]).map(snapshotFromRow);
  }

  async deleteSnapshot(id: string): Promise<void> {
    this.snap.deleteSnapshot.run(id);
  }

  async linkClone(vmId: string, snapshotId: string): Promise<void> {
    this.snap.linkClone.run(vmId, snapshotId);
  }

  async listClones(snapshotId: string): Promise<string[]> {
    return (this.snap.listClones.all(snapshotId) as Row[]).map((r) => r.vm_id as string);
  }

  async snapshotOfVm(vmId: string): Promise<string | null> {
    return ((this.snap.snapshotOfVm.get(vmId) as Row | undefined)?.snapshot_id as string | undefined) ?? null;
  }

  async insertTemplate(t: TemplateRecord): Promise<void> {
    uniqueName(() => this.snap.insertTemplate.run(templateToRow(t)), `a template with key ${t.key} already exists`);
  }

  async getTemplate(id: string): Promise<TemplateRecord | null> {
    const row = this.snap.getTemplate.get(id) as Row | undefined;
    return row ? templateFromRow(row) : null;
  }

  async getTemplateByKey(key: string): Promise<TemplateRecord | null> {
    const row = this.snap.getTemplateByKey.get(key) as Row | undefined;
    return row ? templateFromRow(row) : null;
  }

  async listTemplates(): Promise<TemplateRecord[]> {
    return (this.snap.listTemplates.all() as Row[]).map(templateFromRow);
  }

  async updateTemplate(id: string, patch: Partial<Omit<TemplateRecord, 'id' | 'createdAt'>>): Promise<TemplateRecord> {
    const row = this.updateColumns('templates', id, patchColumns(patch, templateToRow, ['id', 'createdAt']), { updated_at: Date.now() });
    if (!row) throw new KilnError('KILN_ERR_TEMPLATE_NOT_FOUND', `no template ${id}`);
    return templateFromRow(row);
  }

  async deleteTemplate(id: string): Promise<void> {
    this.snap.deleteTemplate.run(id);
  }

  // ---- cluster nodes (v9); a single host never registers one ----

  async registerNode(n: NodeRegistration, now: number): Promise<NodeRecord> {
    let row: Row | undefined;
    uniqueName(() => {
      row = this.db
        .prepare(
          `INSERT INTO nodes (id, name, url, e2b_url, state, incarnation, capacity, registered_at, heartbeat_at, lost_at)
           VALUES (?, ?, ?, ?, 'ready', 1, ?, ?, ?, NULL)
           ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, e2b_url = excluded.e2b_url, state = 'ready', incarnation = nodes.incarnation + 1,
             capacity = excluded.capacity, registered_at = excluded.registered_at, heartbeat_at = excluded.heartbeat_at, lost_at = NULL
           RETURNING *`,
        )
        .get(n.id, n.name, n.url, n.e2bUrl ?? null, JSON.stringify(n.capacity), now, now) as Row;
    }, `a node named ${JSON.stringify(n.name)} is already registered`);
    return nodeFromRow(row!);
  }

  async heartbeatNode(id: string, incarnation: number, capacity: NodeCapacity, now: number): Promise<NodeRecord | null> {
    const row = this.db
      .prepare(`UPDATE nodes SET heartbeat_at = ?, capacity = ? WHERE id = ? AND state = 'ready' AND incarnation = ? RETURNING *`)
      .get(now, JSON.stringify(capacity), id, incarnation) as Row | undefined;
    return row ? nodeFromRow(row) : null;
  }

  async getNode(id: string): Promise<NodeRecord | null> {
    const row = this.db.prepare('SELECT * FROM nodes WHERE id = ?').get(id) as Row | undefined;
    return row ? nodeFromRow(row) : null;
  }

  async listNodes(): Promise<NodeRecord[]> {
    return (this.db.prepare('SELECT * FROM nodes ORDER BY name').all() as Row[]).map(nodeFromRow);
  }

  async listNodesWithCommitted(states: readonly VmState[]): Promise<NodeCommitted[]> {
    const rows = this.db
      .prepare(
        `SELECT n.*, COALESCE(c.vcpus, 0) AS committed_vcpus, COALESCE(c.memory_mib, 0) AS committed_memory_mib FROM nodes n
         LEFT JOIN (SELECT node_id, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib FROM vms
                    WHERE node_id IS NOT NULL AND state IN (SELECT value FROM json_each(?)) GROUP BY node_id) c ON c.node_id = n.id
         ORDER BY n.name`,
      )
      .all(JSON.stringify(states)) as Row[];
    return rows.map((r) => ({ node: nodeFromRow(r), committed: { vcpus: r.committed_vcpus as number, memoryMib: r.committed_memory_mib as number } }));
  }

  async deleteNode(id: string): Promise<void> {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM node_subnets WHERE node_id = ?').run(id);
      this.db.prepare('DELETE FROM nodes WHERE id = ?').run(id);
    })();
  }

  async leaseNodeSubnet(nodeId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null> {
    return this.db.transaction(() => {
      const held = this.db.prepare('SELECT subnet FROM node_subnets WHERE node_id = ?').get(nodeId) as { subnet: string } | undefined;
      if (held) return held.subnet;
      const taken = new Set((this.db.prepare('SELECT subnet FROM node_subnets').all() as { subnet: string }[]).map((r) => r.subnet));
      const subnet = pick(taken);
      if (subnet !== null) this.db.prepare('INSERT INTO node_subnets (subnet, node_id, leased_at) VALUES (?, ?, ?)').run(subnet, nodeId, Date.now());
      return subnet;
    }).immediate();
  }

  async markNodesLost(heartbeatBefore: number, now: number): Promise<LostNode[]> {
    return this.db.transaction(() => {
      const lost = this.db
        .prepare(`UPDATE nodes SET state = 'lost', lost_at = ? WHERE state = 'ready' AND heartbeat_at < ? RETURNING id`)
        .all(now, heartbeatBefore) as { id: string }[];
      const markVms = this.db.prepare(
        `UPDATE vms SET state = 'lost', state_reason = ?, updated_at = ? WHERE node_id = ? AND state IN (${LOSABLE_STATES.map(() => '?').join(', ')}) RETURNING id`,
      );
      const dropPulls = this.db.prepare(
        `DELETE FROM images WHERE state = 'pulling' AND id IN (SELECT image_id FROM image_copies WHERE node_id = ? AND state = 'fetching') RETURNING id`,
      );
      const dropFetches = this.db.prepare(`DELETE FROM image_copies WHERE node_id = ? AND state = 'fetching'`);
      return lost.map(({ id }) => {
        const vms = (markVms.all(`node ${id} stopped heartbeating`, now, id, ...LOSABLE_STATES) as { id: string }[]).map((r) => r.id).sort();
        const pulls = (dropPulls.all(id) as { id: string }[]).map((r) => r.id).sort();
        dropFetches.run(id);
        return { node: id, vms, pulls };
      });
    })();
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

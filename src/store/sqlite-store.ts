// SQLite implementation of the store: one file in the state dir, WAL, statements prepared
// once, schema versioned with PRAGMA user_version.
import Database from 'better-sqlite3';
import { KilnError } from '../errors.ts';
import { SqliteFunctionStore, type FunctionStore } from './function-store.ts';
import { MIGRATIONS } from './migrations.ts';
import type { ContainerRecord, EventRecord, ImageRecord, PhaseRecord, SnapshotRecord, Store, TemplateRecord, VmRecord, VolumeRecord } from './store.ts';

type Row = Record<string, unknown>;

function vmFromRow(r: Row): VmRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    state: r.state as VmRecord['state'],
    stateReason: (r.state_reason as string | null) ?? null,
    imageId: r.image_id as string,
    vcpus: r.vcpus as number,
    memoryMib: r.memory_mib as number,
    kernelArgs: JSON.parse(r.kernel_args as string),
    cmd: r.cmd === null ? null : JSON.parse(r.cmd as string),
    env: JSON.parse(r.env as string),
    network: r.network as VmRecord['network'],
    ip: (r.ip as string | null) ?? null,
    ports: JSON.parse(r.ports as string),
    readiness: r.readiness as VmRecord['readiness'],
    agentToken: (r.agent_token as string | null) ?? null,
    agent: r.agent === null || r.agent === undefined ? null : JSON.parse(r.agent as string),
    health: r.health as VmRecord['health'],
    healthReason: (r.health_reason as string | null) ?? null,
    backend: r.backend as VmRecord['backend'],
    accelerator: r.accelerator as VmRecord['accelerator'],
    pid: (r.pid as number | null) ?? null,
    bootCount: r.boot_count as number,
    consoleOffset: r.console_offset as number,
    exitCode: (r.exit_code as number | null) ?? null,
    volumes: JSON.parse((r.volumes as string | undefined) ?? '[]'),
    process: r.process === null || r.process === undefined ? null : JSON.parse(r.process as string),
    classic: r.classic === null || r.classic === undefined ? null : JSON.parse(r.classic as string),
    egress: r.egress === null || r.egress === undefined ? null : JSON.parse(r.egress as string),
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
  };
}

function vmToRow(vm: VmRecord): Row {
  return {
    id: vm.id,
    name: vm.name,
    state: vm.state,
    state_reason: vm.stateReason,
    image_id: vm.imageId,
    vcpus: vm.vcpus,
    memory_mib: vm.memoryMib,
    kernel_args: JSON.stringify(vm.kernelArgs),
    cmd: vm.cmd === null ? null : JSON.stringify(vm.cmd),
    env: JSON.stringify(vm.env),
    network: vm.network,
    ip: vm.ip,
    ports: JSON.stringify(vm.ports),
    readiness: vm.readiness,
    agent_token: vm.agentToken,
    agent: vm.agent === null ? null : JSON.stringify(vm.agent),
    health: vm.health,
    health_reason: vm.healthReason,
    backend: vm.backend,
    accelerator: vm.accelerator,
    pid: vm.pid,
    boot_count: vm.bootCount,
    console_offset: vm.consoleOffset,
    exit_code: vm.exitCode,
    volumes: JSON.stringify(vm.volumes ?? []),
    process: vm.process ? JSON.stringify(vm.process) : null,
    classic: vm.classic ? JSON.stringify(vm.classic) : null,
    egress: vm.egress ? JSON.stringify(vm.egress) : null,
    created_at: vm.createdAt,
    updated_at: vm.updatedAt,
  };
}

function imageFromRow(r: Row): ImageRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    digest: r.digest as string,
    format: r.format as ImageRecord['format'],
    path: r.path as string,
    sizeBytes: r.size_bytes as number,
    config: JSON.parse(r.config as string),
    createdAt: r.created_at as number,
    state: (r.state as ImageRecord['state'] | undefined) ?? 'ready',
    source: (r.source as string | null) ?? null,
    manifestDigest: (r.manifest_digest as string | null) ?? null,
    layers: JSON.parse((r.layers as string | undefined) ?? '[]'),
    builder: (r.builder as string | null) ?? null,
  };
}

function imageToRow(image: ImageRecord): Row {
  return {
    id: image.id,
    name: image.name,
    digest: image.digest,
    format: image.format,
    path: image.path,
    size_bytes: image.sizeBytes,
    config: JSON.stringify(image.config),
    created_at: image.createdAt,
    state: image.state ?? 'ready',
    source: image.source ?? null,
    manifest_digest: image.manifestDigest ?? null,
    layers: JSON.stringify(image.layers ?? []),
    builder: image.builder ?? null,
  };
}

function volumeFromRow(r: Row): VolumeRecord {
  return { id: r.id as string, name: r.name as string, sizeMib: r.size_mib as number, path: r.path as string, createdAt: r.created_at as number };
}

function containerFromRow(r: Row): ContainerRecord {
  return {
    id: r.id as string,
    image: r.image as string,
    restart: JSON.parse(r.restart as string),
    autoRemove: r.auto_remove === 1,
    restartCount: r.restart_count as number,
    backoffStep: r.backoff_step as number,
    userStopped: r.user_stopped === 1,
    handledBoot: r.handled_boot as number,
    restartAt: (r.restart_at as number | null) ?? null,
    createdAt: r.created_at as number,
  };
}

function snapshotFromRow(r: Row): SnapshotRecord {
  return {
    id: r.id as string,
    sourceVmId: (r.source_vm_id as string | null) ?? null,
    templateId: (r.template_id as string | null) ?? null,
    path: r.path as string,
    meta: JSON.parse(r.meta as string),
    sizeBytes: r.size_bytes as number,
    createdAt: r.created_at as number,
  };
}

function containerToRow(c: ContainerRecord): Row {
  return {
    id: c.id,
    image: c.image,
    restart: JSON.stringify(c.restart),
    auto_remove: c.autoRemove ? 1 : 0,
    restart_count: c.restartCount,
    backoff_step: c.backoffStep,
    user_stopped: c.userStopped ? 1 : 0,
    handled_boot: c.handledBoot,
    restart_at: c.restartAt,
    created_at: c.createdAt,
  };
}

function templateFromRow(r: Row): TemplateRecord {
  return {
    id: r.id as string,
    imageId: r.image_id as string,
    vcpus: r.vcpus as number,
    memoryMib: r.memory_mib as number,
    key: r.key as string,
    state: r.state as TemplateRecord['state'],
    stateReason: (r.state_reason as string | null) ?? null,
    snapshotId: (r.snapshot_id as string | null) ?? null,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
  };
}

function templateToRow(t: TemplateRecord): Row {
  return {
    id: t.id, image_id: t.imageId, vcpus: t.vcpus, memory_mib: t.memoryMib, key: t.key, state: t.state,
    state_reason: t.stateReason, snapshot_id: t.snapshotId, created_at: t.createdAt, updated_at: t.updatedAt,
  };
}

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
        network, ip, ports, readiness, agent_token, agent, health, health_reason, backend, accelerator, pid, boot_count, console_offset, exit_code, volumes, process, classic, egress, created_at, updated_at) VALUES (@id, @name, @state, @state_reason,
        @image_id, @vcpus, @memory_mib, @kernel_args, @cmd, @env, @network, @ip, @ports, @readiness, @agent_token, @agent, @health, @health_reason, @backend, @accelerator, @pid, @boot_count, @console_offset, @exit_code,
        @volumes, @process, @classic, @egress, @created_at, @updated_at)`),
      updateVm: p(`UPDATE vms SET name=@name, state=@state, state_reason=@state_reason, image_id=@image_id, vcpus=@vcpus,
        memory_mib=@memory_mib, kernel_args=@kernel_args, cmd=@cmd, env=@env, network=@network, ip=@ip, ports=@ports, readiness=@readiness,
        agent_token=@agent_token, agent=@agent, health=@health, health_reason=@health_reason, backend=@backend, accelerator=@accelerator,
        pid=@pid, boot_count=@boot_count, console_offset=@console_offset, exit_code=@exit_code, volumes=@volumes, process=@process, classic=@classic, egress=@egress, updated_at=@updated_at WHERE id=@id`),
      getVm: p('SELECT * FROM vms WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1'),
      listVms: p('SELECT * FROM vms ORDER BY created_at, id'),
      deleteVm: p('DELETE FROM vms WHERE id = ?'),
      leasedIps: p('SELECT ip FROM vms WHERE ip IS NOT NULL'),
      setIp: p('UPDATE vms SET ip = ? WHERE id = ?'),
      insertPort: p('INSERT INTO published_ports (proto, host_port, vm_id, guest_port) VALUES (?, ?, ?, ?)'),
      countVmsUsingImage: p('SELECT COUNT(*) AS n FROM vms WHERE image_id = ?'),
      insertImage: p(`INSERT INTO images (id, name, digest, format, path, size_bytes, config, created_at, state, source, manifest_digest, layers, builder)
        VALUES (@id, @name, @digest, @format, @path, @size_bytes, @config, @created_at, @state, @source, @manifest_digest, @layers, @builder)`),
      updateImage: p(`UPDATE images SET name=@name, digest=@digest, format=@format, path=@path, size_bytes=@size_bytes, config=@config,
        state=@state, source=@source, manifest_digest=@manifest_digest, layers=@layers, builder=@builder WHERE id=@id`),
      insertVolume: p('INSERT INTO volumes (id, name, size_mib, path, created_at) VALUES (@id, @name, @size_mib, @path, @created_at)'),
      getVolume: p('SELECT * FROM volumes WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1'),
      listVolumes: p('SELECT * FROM volumes ORDER BY created_at, id'),
      deleteVolume: p('DELETE FROM volumes WHERE id = ?'),
      insertContainer: p(`INSERT INTO containers (id, image, restart, auto_remove, restart_count, backoff_step, user_stopped, handled_boot, restart_at, created_at)
        VALUES (@id, @image, @restart, @auto_remove, @restart_count, @backoff_step, @user_stopped, @handled_boot, @restart_at, @created_at)`),
      updateContainer: p(`UPDATE containers SET image=@image, restart=@restart, auto_remove=@auto_remove, restart_count=@restart_count,
        backoff_step=@backoff_step, user_stopped=@user_stopped, handled_boot=@handled_boot, restart_at=@restart_at WHERE id=@id`),
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
    const row = this.stmt.getVm.get(id, id, id) as Row | undefined;
    if (!row) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${id}`);
    const next: VmRecord = { ...vmFromRow(row), ...patch, updatedAt: Date.now() };
    this.stmt.updateVm.run(vmToRow(next));
    return next;
  }

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
    const row = this.stmt.getImage.get(id, id, id) as Row | undefined;
    if (!row) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${id}`);
    const next: ImageRecord = { ...imageFromRow(row), ...patch };
    this.stmt.updateImage.run(imageToRow(next));
    return next;
  }

  async insertVolume(v: VolumeRecord): Promise<void> {
    uniqueName(
      () => this.stmt.insertVolume.run({ id: v.id, name: v.name, size_mib: v.sizeMib, path: v.path, created_at: v.createdAt }),
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
    const row = this.stmt.getContainer.get(id) as Row | undefined;
    if (!row) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${id}`);
    const next: ContainerRecord = { ...containerFromRow(row), ...patch };
    this.stmt.updateContainer.run(containerToRow(next));
    return next;
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
      insertSnapshot: p(`INSERT INTO snapshots (id, source_vm_id, template_id, path, meta, size_bytes, created_at)
        VALUES (@id, @source_vm_id, @template_id, @path, @meta, @size_bytes, @created_at)`),
      getSnapshot: p('SELECT * FROM snapshots WHERE id = ?'),
      listSnapshots: p('SELECT * FROM snapshots ORDER BY created_at, id'),
      deleteSnapshot: p('DELETE FROM snapshots WHERE id = ?'),
      linkClone: p('INSERT OR REPLACE INTO vm_snapshots (vm_id, snapshot_id) VALUES (?, ?)'),
      listClones: p('SELECT vm_id FROM vm_snapshots WHERE snapshot_id = ? ORDER BY vm_id'),
      snapshotOfVm: p('SELECT snapshot_id FROM vm_snapshots WHERE vm_id = ?'),
      insertTemplate: p(`INSERT INTO templates (id, image_id, vcpus, memory_mib, key, state, state_reason, snapshot_id, created_at, updated_at)
        VALUES (@id, @image_id, @vcpus, @memory_mib, @key, @state, @state_reason, @snapshot_id, @created_at, @updated_at)`),
      updateTemplate: p(`UPDATE templates SET image_id=@image_id, vcpus=@vcpus, memory_mib=@memory_mib, key=@key, state=@state,
        state_reason=@state_reason, snapshot_id=@snapshot_id, updated_at=@updated_at WHERE id=@id`),
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
      meta: JSON.stringify(s.meta), size_bytes: s.sizeBytes, created_at: s.createdAt,
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
    this.snap.insertTemplate.run(templateToRow(t));
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
    const cur = await this.getTemplate(id);
    if (!cur) throw new KilnError('KILN_ERR_TEMPLATE_NOT_FOUND', `no template ${id}`);
    const next = { ...cur, ...patch, updatedAt: Date.now() };
    this.snap.updateTemplate.run(templateToRow(next));
    return next;
  }

  async deleteTemplate(id: string): Promise<void> {
    this.snap.deleteTemplate.run(id);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

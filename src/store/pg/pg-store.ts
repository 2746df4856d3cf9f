// PostgreSQL implementation of the store, for kiln clusters (`kiln serve --store postgres://…`):
// one repository per aggregate (VMs with their ports, phases and containers; images and
// volumes; snapshots and templates; events; functions; cluster nodes), composed here behind the Store
// interface. Updates are column-level and state transitions compare-and-set, so several
// kilnds writing one database never overwrite each other's columns.
import { KilnError } from '../../errors.ts';
import type { FunctionStore } from '../function-store.ts';
import type { ContainerRecord, EventRecord, ImageCopy, ImageRecord, NodeCapacity, NodeRegistration, PhaseRecord, SnapshotRecord, Store, TemplateRecord, VmRecord, VmState, VolumeRecord } from '../store.ts';
import { LOCKS, PgDb } from './db.ts';
import { PgEventRepo } from './event-repo.ts';
import { PgFunctionRepo } from './function-repo.ts';
import { PgImageRepo } from './image-repo.ts';
import { PgNodeRepo } from './node-repo.ts';
import { PG_MIGRATIONS } from './migrations.ts';
import { PgSnapshotRepo } from './snapshot-repo.ts';
import { PgVmRepo } from './vm-repo.ts';

export class PgStore implements Store {
  readonly vms: PgVmRepo;
  readonly images: PgImageRepo;
  readonly snapshots: PgSnapshotRepo;
  readonly events: PgEventRepo;
  readonly nodes: PgNodeRepo;
  readonly functions: FunctionStore;

  private constructor(readonly db: PgDb) {
    this.vms = new PgVmRepo(db);
    this.images = new PgImageRepo(db);
    this.snapshots = new PgSnapshotRepo(db);
    this.events = new PgEventRepo(db);
    this.nodes = new PgNodeRepo(db);
    this.functions = new PgFunctionRepo(db);
  }

  /** Connects and brings the schema up to date; a database from a newer kiln is refused. */
  static async open(url: string, opts: { maxConnections?: number; minConnections?: number } = {}): Promise<PgStore> {
    const db = new PgDb(url, { max: opts.maxConnections, min: opts.minConnections });
    try {
      await migrate(db);
    } catch (e) {
      await db.close().catch(() => {});
      if (e instanceof KilnError) throw e;
      throw new KilnError('KILN_ERR_HOST_SETUP', `cannot open the PostgreSQL store: ${(e as Error).message}`, undefined, { cause: e });
    }
    return new PgStore(db);
  }

  // ---- VMs, ports, addresses, phases, containers ----
  insertVm(vm: VmRecord) { return this.vms.insertVm(vm); }
  updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>) { return this.vms.updateVm(id, patch); }
  transitionVm(id: string, from: readonly VmState[], patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>) { return this.vms.transitionVm(id, from, patch); }
  getVm(idOrName: string) { return this.vms.getVm(idOrName); }
  listVms() { return this.vms.listVms(); }
  deleteVm(id: string) { return this.vms.deleteVm(id); }
  countVmsUsingImage(imageId: string) { return this.vms.countVmsUsingImage(imageId); }
  assignIp(vmId: string, pick: (taken: ReadonlySet<string>) => string | null) { return this.vms.assignIp(vmId, pick); }
  recordPhase(p: PhaseRecord) { return this.vms.recordPhase(p); }
  listPhases(vmId: string, boot: number) { return this.vms.listPhases(vmId, boot); }
  insertContainer(c: ContainerRecord) { return this.vms.insertContainer(c); }
  updateContainer(id: string, patch: Partial<Omit<ContainerRecord, 'id' | 'createdAt'>>) { return this.vms.updateContainer(id, patch); }
  getContainer(id: string) { return this.vms.getContainer(id); }
  listContainers() { return this.vms.listContainers(); }

  // ---- images and volumes ----
  insertImage(image: ImageRecord) { return this.images.insertImage(image); }
  getImage(idOrName: string) { return this.images.getImage(idOrName); }
  getImageByDigest(digest: string) { return this.images.getImageByDigest(digest); }
  listImages() { return this.images.listImages(); }
  deleteImage(id: string) { return this.images.deleteImage(id); }
  updateImage(id: string, patch: Partial<Omit<ImageRecord, 'id'>>) { return this.images.updateImage(id, patch); }
  putImageCopy(c: ImageCopy) { return this.images.putImageCopy(c); }
  listImageCopies(filter: { imageId?: string; nodeId?: string }) { return this.images.listImageCopies(filter); }
  deleteImageCopy(imageId: string, nodeId: string) { return this.images.deleteImageCopy(imageId, nodeId); }
  insertVolume(v: VolumeRecord) { return this.images.insertVolume(v); }
  getVolume(idOrName: string) { return this.images.getVolume(idOrName); }
  listVolumes() { return this.images.listVolumes(); }
  deleteVolume(id: string) { return this.images.deleteVolume(id); }

  // ---- events ----
  appendEvent(e: Omit<EventRecord, 'seq'>) { return this.events.appendEvent(e); }
  listEvents(opts: { vmId?: string; afterSeq?: number; limit?: number }) { return this.events.listEvents(opts); }
  firstEventSeq() { return this.events.firstEventSeq(); }
  lastEventSeq() { return this.events.lastEventSeq(); }
  pruneEvents(opts: { beforeTs?: number; vmId?: string; keepPerVm?: number; keepTotal?: number }) { return this.events.pruneEvents(opts); }

  // ---- snapshots and templates ----
  insertSnapshot(s: SnapshotRecord) { return this.snapshots.insertSnapshot(s); }
  getSnapshot(id: string) { return this.snapshots.getSnapshot(id); }
  listSnapshots() { return this.snapshots.listSnapshots(); }
  deleteSnapshot(id: string) { return this.snapshots.deleteSnapshot(id); }
  linkClone(vmId: string, snapshotId: string) { return this.snapshots.linkClone(vmId, snapshotId); }
  listClones(snapshotId: string) { return this.snapshots.listClones(snapshotId); }
  snapshotOfVm(vmId: string) { return this.snapshots.snapshotOfVm(vmId); }
  insertTemplate(t: TemplateRecord) { return this.snapshots.insertTemplate(t); }
  getTemplate(id: string) { return this.snapshots.getTemplate(id); }
  getTemplateByKey(key: string) { return this.snapshots.getTemplateByKey(key); }
  listTemplates() { return this.snapshots.listTemplates(); }
  updateTemplate(id: string, patch: Partial<Omit<TemplateRecord, 'id' | 'createdAt'>>) { return this.snapshots.updateTemplate(id, patch); }
  deleteTemplate(id: string) { return this.snapshots.deleteTemplate(id); }

  // ---- cluster nodes ----
  registerNode(n: NodeRegistration, now: number) { return this.nodes.registerNode(n, now); }
  heartbeatNode(id: string, incarnation: number, capacity: NodeCapacity, now: number) { return this.nodes.heartbeatNode(id, incarnation, capacity, now); }
  getNode(id: string) { return this.nodes.getNode(id); }
  listNodes() { return this.nodes.listNodes(); }
  listNodesWithCommitted(states: readonly VmState[]) { return this.nodes.listNodesWithCommitted(states); }
  deleteNode(id: string) { return this.nodes.deleteNode(id); }
  markNodesLost(heartbeatBefore: number, now: number) { return this.nodes.markNodesLost(heartbeatBefore, now); }
  leaseNodeSubnet(nodeId: string, pick: (taken: ReadonlySet<string>) => string | null) { return this.nodes.leaseNodeSubnet(nodeId, pick); }

  async close(): Promise<void> {
    await this.db.close();
  }
}

/** The schema version this database is at (0: empty). */
export async function schemaVersion(db: PgDb): Promise<number> {
  const exists = await db.row(`SELECT to_regclass('kiln_schema') IS NOT NULL AS ok`);
  if (!exists?.ok) return 0;
  return ((await db.row('SELECT version FROM kiln_schema'))?.version as number | undefined) ?? 0;
}

async function migrate(db: PgDb): Promise<void> {
  await db.tx(async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [LOCKS.migrate]);
    await c.query('CREATE TABLE IF NOT EXISTS kiln_schema (version integer NOT NULL)');
    const cur = ((await db.row('SELECT version FROM kiln_schema', [], c))?.version as number | undefined) ?? null;
    if (cur === null) await c.query('INSERT INTO kiln_schema (version) VALUES (0)');
    const from = cur ?? 0;
    if (from > PG_MIGRATIONS.length) {
      throw new KilnError('KILN_ERR_HOST_SETUP', `PostgreSQL schema v${from} is newer than this kiln (v${PG_MIGRATIONS.length}); upgrade kiln`);
    }
    // DDL is transactional in PostgreSQL: every step and the version bump commit together.
    for (let v = from; v < PG_MIGRATIONS.length; v++) await c.query(PG_MIGRATIONS[v]!);
    await c.query('UPDATE kiln_schema SET version = $1', [PG_MIGRATIONS.length]);
  });
}

// The store interface. SQLite implements it for the single-host install (sqlite-store.ts),
// PostgreSQL for a cluster (pg/pg-store.ts); one conformance suite (conformance.ts) runs on
// both. Every method is async because PostgreSQL's is, even though better-sqlite3 is not.
// Updates are column-level in both: a patch writes only its own fields, never a stale copy
// of the rest of the row (another host may be writing those).
import type { Accelerator, BackendName } from '../vmm/driver.ts';
import type { FunctionStore } from './function-store.ts';
import type { SnapshotMeta } from '../snapshot/meta.ts';
import type { EgressPolicy } from '../net/egress.ts';

/** 'lost': its node stopped heartbeating (a cluster, src/cluster/): kiln does not know whether it runs. */
export const VM_STATES = ['creating', 'booting', 'ready', 'paused', 'stopping', 'stopped', 'failed', 'lost'] as const;
export type VmState = (typeof VM_STATES)[number];

export type NetworkMode = 'bridge' | 'none';

export interface PortMapping {
  proto: 'tcp' | 'udp';
  hostPort: number;
  guestPort: number;
}

/** How kilnd learns that the guest is ready: 'auto' is the agent's push, with fallbacks. */
export type ReadinessMode = 'auto' | 'push' | 'neighbour' | 'poll';

/** What kilnd knows about the guest agent of the current boot. */
export interface AgentInfo {
  /** The channel sessions use: TCP over the VM's network, vsock, or only the serial console. */
  channel: 'tcp' | 'vsock' | 'serial';
  /** How readiness was detected for this boot. */
  readiness: 'push' | 'neighbour' | 'poll' | 'serial';
  version: string | null;
  /** Guest ready → host knew, on the host's clock; null until measured. */
  latencyMs: number | null;
  /** Uncertainty of that mapping (half the `time` round trip). */
  clockErrorMs: number | null;
}

export interface VmRecord {
  id: string;
  name: string;
  state: VmState;
  stateReason: string | null;
  imageId: string;
  vcpus: number;
  memoryMib: number;
  kernelArgs: string[];
  cmd: string[] | null;
  env: Record<string, string>;
  /** 'bridge': a tap on kiln's bridge with `ip`; 'none': no NIC at all. */
  network: NetworkMode;
  /** Leased when the VM is created (known before boot), released when it is deleted. */
  ip: string | null;
  /** Host ports published to the guest; unique per (proto, hostPort) across all VMs. */
  ports: PortMapping[];
  readiness: ReadinessMode;
  /** Per-VM secret the agent authenticates with (both directions); kept across restarts. */
  agentToken: string | null;
  agent: AgentInfo | null;
  /** 'unhealthy' when the guest's agent misbehaved (garbage, oversized frames, silence). */
  health: 'unknown' | 'healthy' | 'unhealthy';
  healthReason: string | null;
  backend: BackendName;
  accelerator: Accelerator;
  pid: number | null;
  /** Incremented on every (re)start: phases and console offsets are per boot. */
  bootCount: number;
  /** Console log size when the current boot started: markers before it belong to older boots. */
  consoleOffset: number;
  exitCode: number | null;
  /** Extra drives: persistent volumes and read-only host directories, in drive order. */
  volumes: VmVolume[];
  /** How the workload is started beyond argv/env (containers); null/absent: the image's. */
  process?: VmProcess | null;
  /** Set for classic VMs (systemd, SSH, own writable disk); null for workload VMs. */
  classic?: ClassicVm | null;
  /** Where the guest may connect beyond the host (src/net/egress.ts); null/absent: the default. */
  egress?: EgressPolicy | null;
  /** The cluster node that runs it (src/cluster/); null/absent on a single host. */
  nodeId?: string | null;
  /** What its maker says it is (src/vm/labels.ts: bounded, validated); absent: none. */
  labels?: Record<string, string>;
  createdAt: number;
  updatedAt: number;
}

/** Container-style overrides of the image's process config (Docker semantics, src/containers/oci-process.ts). */
export interface VmProcess {
  /** Replaces the image's entrypoint and resets its cmd (`[]`: no entrypoint). */
  entrypoint?: string[];
  workdir?: string;
  /** "name|uid[:group|gid]", resolved by kiln-init against the image's /etc/passwd and /etc/group. */
  user?: string;
  /** 'tagged': the workload's stdout/stderr reach kilnd as tagged console lines (container logs). */
  stdio?: 'tagged';
}

export type RestartPolicyName = 'no' | 'on-failure' | 'always';

export interface RestartPolicy {
  name: RestartPolicyName;
  /** on-failure only: restarts at most this many times (null: unlimited). */
  maxRetries: number | null;
}

/** A container is a VM (same id and name) plus what only containers have. */
export interface ContainerRecord {
  id: string;
  /** The image reference as the user gave it. */
  image: string;
  restart: RestartPolicy;
  autoRemove: boolean;
  /** Restarts done by the policy since the user last started it. */
  restartCount: number;
  /** Consecutive quick exits: the backoff exponent (reset after a stable run). */
  backoffStep: number;
  /** Stopped by the user: the policy leaves it alone until the user starts it. */
  userStopped: boolean;
  /** The VM boot whose exit the policy has already acted on (survives kilnd restarts). */
  handledBoot: number;
  /** When the policy's pending restart is due (epoch ms); null: none pending. */
  restartAt: number | null;
  createdAt: number;
}

/** A classic VM: what was asked for at create, and its disk (the VM's state, kept across stops). */
export interface ClassicVm {
  hostname: string;
  sshAuthorizedKeys: string[];
  userData: string | null;
  disk: {
    /** `<state>/disks/<vm id>.ext4`: outside the runtime dir, which a failed boot removes. */
    path: string;
    sizeBytes: number;
    /** How it was cloned from the base image: null until the first boot made it. */
    strategy: 'reflink' | 'sparse-copy' | null;
    cloneMs: number | null;
  };
}

export interface VmVolume {
  /** A volume id, or (exclusive) a host directory under an allowed root, attached read-only. */
  volumeId?: string;
  hostPath?: string;
  /** Absolute mount point in the guest. */
  target: string;
  readOnly: boolean;
}

export interface VolumeRecord {
  id: string;
  name: string;
  sizeMib: number;
  path: string;
  createdAt: number;
  /** The cluster node whose disk holds the file (null on a single host). */
  nodeId?: string | null;
}

export interface ImageConfig {
  /** Docker semantics: kept when a VM overrides cmd. Absent on images imported from a directory. */
  entrypoint?: string[];
  cmd: string[];
  env: Record<string, string>;
  workdir: string;
  user: string;
}

export type ImageState = 'pulling' | 'ready';

export interface ImageRecord {
  id: string;
  name: string;
  /** Pulled: the manifest digest. Imported: sha256 of the root filesystem file (identical trees dedupe). */
  digest: string;
  format: 'squashfs' | 'erofs' | 'ext4';
  /** '' while pulling. */
  path: string;
  sizeBytes: number;
  config: ImageConfig;
  createdAt: number;
  /** 'pulling' records are placeholders: nothing boots from them; a failed pull removes them. */
  state: ImageState;
  /** The reference it was pulled from (canonical), or null for imports. */
  source: string | null;
  manifestDigest: string | null;
  /** Layer blob digests, base first (what GC keeps). */
  layers: string[];
  /** How the root filesystem was built, e.g. "mksquashfs -comp zstd -Xcompression-level 3". */
  builder: string | null;
}

export type ImageCopyState = 'fetching' | 'ready';

/**
 * One node's own file of an image (a cluster's catalogue is shared, files are per node; a
 * single host records its copies under its one node id too). `path` is on that node's disk
 * and means nothing on another; `sha256` is the file's, computed when the node wrote it and
 * what a node fetching it from this one verifies against.
 */
export interface ImageCopy {
  imageId: string;
  nodeId: string;
  path: string;
  sizeBytes: number;
  sha256: string;
  /** 'fetching': the node is fetching it (nothing may read it); 'ready': complete and verified. */
  state: ImageCopyState;
  updatedAt: number;
}

export interface PhaseRecord {
  vmId: string;
  boot: number;
  name: string;
  startedAt: number;
  endedAt: number | null;
}

export interface EventRecord {
  seq: number;
  ts: number;
  type: string;
  vmId: string | null;
  data: Record<string, unknown>;
}

/** An immutable snapshot on disk (`<state>/snapshots/<id>/`) and what it is tied to. */
export interface SnapshotRecord {
  id: string;
  /** The VM it was taken of (may be gone since). */
  sourceVmId: string | null;
  /** Set when a template owns it (the template's golden snapshot). */
  templateId: string | null;
  path: string;
  meta: SnapshotMeta;
  sizeBytes: number;
  createdAt: number;
  /** The cluster node whose disk holds the files (null on a single host). */
  nodeId?: string | null;
}

export type TemplateState = 'building' | 'ready' | 'failed';

/** One golden snapshot per (image, vcpus, memory, guest build, VMM): see src/snapshot/templates.ts. */
export interface TemplateRecord {
  id: string;
  imageId: string;
  vcpus: number;
  memoryMib: number;
  /** Hash of everything the golden snapshot depends on: a change means a rebuild. */
  key: string;
  state: TemplateState;
  stateReason: string | null;
  snapshotId: string | null;
  createdAt: number;
  updatedAt: number;
  /** The cluster node that built it (its golden snapshot's files are there; null on a single host). */
  nodeId?: string | null;
}

export interface SnapshotStore {
  insertSnapshot(s: SnapshotRecord): Promise<void>;
  getSnapshot(id: string): Promise<SnapshotRecord | null>;
  listSnapshots(): Promise<SnapshotRecord[]>;
  deleteSnapshot(id: string): Promise<void>;
  /** Records that `vmId` was restored from `snapshotId` (dropped with the VM's row). */
  linkClone(vmId: string, snapshotId: string): Promise<void>;
  /** Clones (VM rows, in any state) restored from the snapshot: its reference count. */
  listClones(snapshotId: string): Promise<string[]>;
  snapshotOfVm(vmId: string): Promise<string | null>;

  insertTemplate(t: TemplateRecord): Promise<void>;
  getTemplate(id: string): Promise<TemplateRecord | null>;
  getTemplateByKey(key: string): Promise<TemplateRecord | null>;
  listTemplates(): Promise<TemplateRecord[]>;
  updateTemplate(id: string, patch: Partial<Omit<TemplateRecord, 'id' | 'createdAt'>>): Promise<TemplateRecord>;
  deleteTemplate(id: string): Promise<void>;
}

export type NodeState = 'ready' | 'lost';

/** What a node reports with every heartbeat: its capacity, what it has committed, what it caches. */
export interface NodeCapacity {
  vcpus: number;
  memoryMib: number;
  committedVcpus: number;
  committedMemoryMib: number;
  vms: number;
  /** Free bytes on the filesystem of its state dir (images, disks, snapshots). */
  diskFreeBytes: number;
  /** Images present on the node (ids): placement prefers a node that has the image. */
  images: string[];
  /** Warm function instances by pool key (runtime/size). */
  warm: Record<string, number>;
  /** Functions this node serves (holds the code of) → its ready instances of each; absent from older nodes. */
  functions?: Record<string, number>;
}

/** A VM host of a cluster (`kiln serve --role node`), as it registered and last heartbeat. */
export interface NodeRecord {
  id: string;
  name: string;
  /** Where the API role reaches this node's kilnd. */
  url: string;
  /** Where the API role reaches this node's E2B listener (`--e2b-listen`); null: it serves none. */
  e2bUrl: string | null;
  state: NodeState;
  /** Bumped by every registration: a heartbeat from an older incarnation is refused. */
  incarnation: number;
  capacity: NodeCapacity;
  registeredAt: number;
  heartbeatAt: number;
  lostAt: number | null;
}

/** A node and what its VM rows in the asked states add up to (NodeStore.listNodesWithCommitted). */
export interface NodeCommitted {
  node: NodeRecord;
  committed: { vcpus: number; memoryMib: number };
}

/** What a node registers with; `e2bUrl` absent or null: it serves no E2B API. */
export interface NodeRegistration {
  id: string;
  name: string;
  url: string;
  e2bUrl?: string | null;
  capacity: NodeCapacity;
}

/** Cluster membership (src/cluster/): registration, heartbeats, the lost-node sweep. */
export interface NodeStore {
  /** Registers (or re-registers) a node: state ready, incarnation + 1, heartbeat now. */
  registerNode(n: NodeRegistration, now: number): Promise<NodeRecord>;
  /**
   * Compare-and-set heartbeat: only while the node is ready at `incarnation`. Null when it was
   * marked lost (or re-registered) meanwhile: the node must register again and reconcile.
   */
  heartbeatNode(id: string, incarnation: number, capacity: NodeCapacity, now: number): Promise<NodeRecord | null>;
  getNode(id: string): Promise<NodeRecord | null>;
  listNodes(): Promise<NodeRecord[]>;
  /**
   * The nodes (as listNodes), each with the vCPUs and memory of its VM rows in `states`, summed
   * per node by the database in the same query: the API role's placement counts a VM placed a
   * moment ago before the node's next heartbeat reports it, without reading every VM row.
   */
  listNodesWithCommitted(states: readonly VmState[]): Promise<NodeCommitted[]>;
  /** Removes the node and releases its VM subnet lease. */
  deleteNode(id: string): Promise<void>;
  /**
   * The node's VM subnet (src/cluster/node-subnet.ts): the one it already holds (kept across
   * its restarts), else `pick` gets every subnet leased now and returns a free one, leased to
   * the node atomically (of racing nodes each gets a different one). Null when `pick` finds
   * none (the cluster range is full). A lease is released only by deleteNode.
   */
  leaseNodeSubnet(nodeId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null>;
  /**
   * Marks every ready node whose last heartbeat is older than `heartbeatBefore` lost, and
   * its VMs in a live state `lost`, in one transaction; what it marked. Its image pulls under
   * way (the catalogue's `pulling` rows it marked with a `fetching` copy) are dropped with its
   * other `fetching` copy rows: nothing will finish them, and a pull of the same reference
   * through another node must not find one still running.
   */
  markNodesLost(heartbeatBefore: number, now: number): Promise<LostNode[]>;
}

/** What the lost sweep marked of one node: its VMs now `lost`, its interrupted pulls (image ids) removed. */
export interface LostNode {
  node: string;
  vms: string[];
  pulls: string[];
}

export interface Store extends SnapshotStore, NodeStore {
  insertVm(vm: VmRecord): Promise<void>;
  updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord>;
  /**
   * Compare-and-set: applies `patch` only while the VM's state is one of `from`, atomically.
   * The VM as written, or null when it is gone or in another state (someone else moved it).
   */
  transitionVm(id: string, from: readonly VmState[], patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord | null>;
  getVm(idOrName: string): Promise<VmRecord | null>;
  listVms(): Promise<VmRecord[]>;
  deleteVm(id: string): Promise<void>;
  countVmsUsingImage(imageId: string): Promise<number>;
  /**
   * Leases an address to a VM atomically: `pick` gets every address leased now and returns
   * a free one (or null when the range is exhausted). Returns the leased address or null.
   */
  assignIp(vmId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null>;

  insertImage(image: ImageRecord): Promise<void>;
  getImage(idOrName: string): Promise<ImageRecord | null>;
  getImageByDigest(digest: string): Promise<ImageRecord | null>;
  listImages(): Promise<ImageRecord[]>;
  deleteImage(id: string): Promise<void>;
  updateImage(id: string, patch: Partial<Omit<ImageRecord, 'id'>>): Promise<ImageRecord>;
  /** Records (or replaces) a node's copy of an image. Deleting the image deletes its copies. */
  putImageCopy(c: ImageCopy): Promise<void>;
  /** Copies of one image, of one node, or both; oldest first. */
  listImageCopies(filter: { imageId?: string; nodeId?: string }): Promise<ImageCopy[]>;
  deleteImageCopy(imageId: string, nodeId: string): Promise<void>;

  insertVolume(v: VolumeRecord): Promise<void>;
  getVolume(idOrName: string): Promise<VolumeRecord | null>;
  listVolumes(): Promise<VolumeRecord[]>;
  deleteVolume(id: string): Promise<void>;

  insertContainer(c: ContainerRecord): Promise<void>;
  updateContainer(id: string, patch: Partial<Omit<ContainerRecord, 'id' | 'createdAt'>>): Promise<ContainerRecord>;
  getContainer(id: string): Promise<ContainerRecord | null>;
  listContainers(): Promise<ContainerRecord[]>;

  recordPhase(phase: PhaseRecord): Promise<void>;
  listPhases(vmId: string, boot: number): Promise<PhaseRecord[]>;

  appendEvent(event: Omit<EventRecord, 'seq'>): Promise<EventRecord>;
  /** Events after `afterSeq`, oldest first, at most `limit` (default 1000): page by the last seq. */
  listEvents(opts: { vmId?: string; afterSeq?: number; limit?: number }): Promise<EventRecord[]>;
  /** The oldest event still stored (retention removes older ones); null when there is none. */
  firstEventSeq(): Promise<number | null>;
  /** The newest event stored; null when there is none (a cluster's API role follows the table from here). */
  lastEventSeq(): Promise<number | null>;
  /**
   * Retention: drops events older than `beforeTs`, all but the newest `keepPerVm` of `vmId`'s
   * (when given), and all but the newest `keepTotal` overall. Returns how many went.
   */
  pruneEvents(opts: { beforeTs?: number; vmId?: string; keepPerVm?: number; keepTotal?: number }): Promise<number>;

  /** Functions, their versions and invocations (function-store.ts). */
  readonly functions: FunctionStore;

  close(): Promise<void>;
}

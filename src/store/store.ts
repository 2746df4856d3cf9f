// The store interface. SQLite implements it today (sqlite-store.ts); a PostgreSQL
// implementation for multi-host is an addition behind this interface, which is why every
// method is async even though better-sqlite3 is synchronous.
import type { Accelerator, BackendName } from '../vmm/driver.ts';

export const VM_STATES = ['creating', 'booting', 'ready', 'paused', 'stopping', 'stopped', 'failed'] as const;
export type VmState = (typeof VM_STATES)[number];

export type NetworkMode = 'bridge' | 'none';

export interface PortMapping {
  proto: 'tcp' | 'udp';
  hostPort: number;
  guestPort: number;
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
  backend: BackendName;
  accelerator: Accelerator;
  pid: number | null;
  /** Incremented on every (re)start: phases and console offsets are per boot. */
  bootCount: number;
  /** Console log size when the current boot started: markers before it belong to older boots. */
  consoleOffset: number;
  exitCode: number | null;
  createdAt: number;
  updatedAt: number;
}

export interface ImageConfig {
  cmd: string[];
  env: Record<string, string>;
  workdir: string;
  user: string;
}

export interface ImageRecord {
  id: string;
  name: string;
  /** sha256 of the root filesystem file: identical trees dedupe to one image. */
  digest: string;
  format: 'squashfs';
  path: string;
  sizeBytes: number;
  config: ImageConfig;
  createdAt: number;
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

export interface Store {
  insertVm(vm: VmRecord): Promise<void>;
  updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord>;
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

  recordPhase(phase: PhaseRecord): Promise<void>;
  listPhases(vmId: string, boot: number): Promise<PhaseRecord[]>;

  appendEvent(event: Omit<EventRecord, 'seq'>): Promise<EventRecord>;
  listEvents(opts: { vmId?: string; afterSeq?: number; limit?: number }): Promise<EventRecord[]>;

  close(): Promise<void>;
}

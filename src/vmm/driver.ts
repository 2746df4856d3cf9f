// The interface every VMM backend implements. The rest of kiln sees only this file;
// src/vmm/registry.ts is the one module that imports a backend's folder.

import type { CpuPriority } from './cgroup/cgroup.ts';

export type { CpuPriority };
export type BackendName = 'qemu' | 'firecracker';
export type Accelerator = 'kvm' | 'tcg';

export interface DriveSpec {
  /** Stable id, also used as the virtio-blk serial where the VMM supports one. */
  id: string;
  path: string;
  readOnly: boolean;
}

/** One virtio-net NIC backed by a host tap that kilnd made (src/net). */
export interface NicSpec {
  /** Host tap device name (≤ 15 chars), already attached to kiln's bridge. */
  tap: string;
  /** Guest MAC, derived from the VM's IP so it is stable across restarts. */
  mac: string;
}

/** Guest↔host vsock, where the VMM has one (Firecracker hybrid vsock; QEMU vhost-vsock). */
export interface VsockSpec {
  /** Guest context id (≥ 3). */
  guestCid: number;
  /** Firecracker: host Unix socket of the hybrid vsock (default `<runtimeDir>/vsock.sock`). */
  udsPath?: string;
}

/** Guest RAM backed by a host file instead of anonymous memory (snapshots, see snapshot()). */
export interface MemoryFileSpec {
  path: string;
  /**
   * true: the guest's RAM is the file (writes reach it): a template VM, whose RAM becomes
   * its snapshot's memory without being copied. false: a private copy-on-write mapping of
   * the file, paged in lazily: a clone of such a snapshot, sharing unwritten pages.
   */
  shared: boolean;
}

/**
 * How guest RAM is held in a snapshot. 'full': all of it was written out (QEMU: into the
 * migration stream; Firecracker: its memory file). 'mapped': the VM's RAM already was a
 * shared file (MemoryFileSpec.shared), which becomes the snapshot's memory as is, and only
 * device state was written; restores map it privately.
 */
export type SnapshotMemory = 'full' | 'mapped';

/** The files a VMM wrote for one snapshot, in the directory snapshot() was given. */
export interface VmmSnapshot {
  /** Device (and vCPU) state; with 'full' memory on QEMU, guest RAM too. */
  stateFile: string;
  memory: SnapshotMemory;
  /** 'mapped': the VM's memory file; 'full' on Firecracker: its memory file; else null. */
  memoryFile: string | null;
  /**
   * Firecracker: the hybrid vsock socket path the snapshotted VMM had; a restore with another
   * path needs vsock_override (Firecracker ≥ 1.16).
   */
  vsockPath?: string;
}

export interface VmSpec {
  id: string;
  /** `<state>/vms/<id>`: sockets, console log, pid file and per-VM drives live here. */
  runtimeDir: string;
  vcpus: number;
  memoryMib: number;
  accelerator: Accelerator;
  kernel: {
    /** bzImage or ELF vmlinux; each driver boots what it can (Firecracker extracts an ELF). */
    path: string;
    initrd: string;
    cmdline: string;
  };
  /** In attach order: the guest sees them as vda, vdb, … in this order. */
  drives: DriveSpec[];
  /** Network interfaces, in order (the guest sees eth0 first). Absent or empty: no network. */
  nics?: NicSpec[];
  vsock?: VsockSpec;
  /** Guest RAM in a file (templates and their clones); absent: anonymous memory. */
  memoryFile?: MemoryFileSpec;
  /** `ip netns` name (or a path) of the namespace the VMM runs in (a clone: the template's tap name inside it). */
  netns?: string;
  /** Its CPU share when the host is busy (default normal): a pooled clone starts `background`. */
  cpuPriority?: CpuPriority;
}

export interface VmmExit {
  /** Why the VMM is gone, for the VM's state reason. */
  reason: string;
  /** True when the guest powered off by itself (clean shutdown), false on a crash or kill. */
  clean: boolean;
  /** The guest asked for a reboot (QEMU runs with -no-reboot, so a reset ends the process). */
  reset?: boolean;
}

/** A running VMM process kilnd controls. Obtained by start() or attach(). */
export interface VmmInstance {
  readonly pid: number;
  /** Resolves once when the VMM process is gone, for whatever reason. Never rejects. */
  readonly exited: Promise<VmmExit>;
  /** Path of the serial console log the VMM appends guest output to. */
  readonly consoleLogPath: string;
  /** Writes bytes to the guest's serial console input. */
  writeConsole(data: string | Buffer): Promise<void>;
  /**
   * An interactive connection to the serial console (input and live output), where the VMM
   * has one (QEMU's chardev socket). The VMM accepts one such connection at a time; kilnd
   * multiplexes it (src/vm/console-mux.ts). Output keeps going to the console log regardless.
   */
  openConsole?(): Promise<import('node:net').Socket>;
  /** Presses the ACPI power button (QEMU: system_powerdown), where the VMM has one. */
  powerdown?(): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /**
   * Changes its CPU share when the host is busy, where the backend can (QEMU: its cgroup; a
   * backend without one leaves VMs at normal and never starts one at background).
   */
  setCpuPriority?(priority: CpuPriority): Promise<void>;
  /**
   * Pauses the guest and writes its state into `dir` (which exists and is empty). With
   * `resume` the guest runs on afterwards; without, it stays paused. A VM whose RAM is a
   * shared memory file and is not resumed gets a 'mapped' snapshot (only device state is
   * written; the file is the memory, and the VM must never run again: resume() refuses).
   */
  snapshot(dir: string, opts: { resume: boolean }): Promise<VmmSnapshot>;
  /** Stops the VMM at once (no guest shutdown) and waits for the process to be gone. */
  kill(): Promise<void>;
  /** Drops kilnd's connections without stopping the VMM (daemon shutdown / restart). */
  detach(): void;
}

/** Times a named sub-step of a driver operation (the VM's timeline: src/vm/timeline.ts). */
export type StepTimer = <T>(name: string, fn: () => Promise<T>) => Promise<T>;
export const untimed: StepTimer = (_name, fn) => fn();

/** One piece of VMM confinement (seccomp, user, chroot, cgroup): in force, or why not. */
export interface ConfinementPiece {
  active: boolean;
  detail: string;
}

export interface ConfinementReport {
  seccomp: ConfinementPiece;
  user: ConfinementPiece;
  chroot: ConfinementPiece;
  cgroup: ConfinementPiece & { version: 1 | 2 | null; controllers: string[] };
}

export interface VmmDriver {
  readonly name: BackendName;
  /** Set when this backend cannot run classic VMs (systemd guests): why, for the error. */
  readonly classicUnsupported?: string;
  /** How this driver confines its VMM processes (/healthz, `kiln doctor`). */
  confinementReport?(): ConfinementReport;
  /**
   * Kills whatever runs in the VM's cgroup (named by the VM's id) and removes it; returns how
   * many processes it killed. For VMMs a crashed kilnd left behind (spawn intents); present
   * where the backend puts its VMMs in cgroups of kiln's.
   */
  reap?(cgroup: string): Promise<number>;
  /** kilnd stops: drop host state no running VM needs (kiln's parent cgroup once empty). */
  release?(): Promise<void>;
  /** Spawns a detached VMM for `spec` and starts the guest. Cleans up after itself on failure. */
  start(spec: VmSpec, signal?: AbortSignal): Promise<VmmInstance>;
  /**
   * Starts a VMM for `spec` from `snapshot` (taken by this backend with the same device
   * layout). The guest comes back paused: resume() starts it, so the caller can finish the
   * clone's host side first. A 'mapped' snapshot needs spec.memoryFile (shared: false) set
   * to its memoryFile. Cleans up after itself on failure.
   */
  restore(spec: VmSpec, snapshot: VmmSnapshot, signal?: AbortSignal, step?: StepTimer): Promise<VmmInstance>;
  /**
   * Re-attaches to a VMM started earlier (by this or a previous kilnd). Returns null when
   * the process is gone or `pid` is not that VM's VMM any more (pid reuse).
   */
  attach(spec: VmSpec, pid: number): Promise<VmmInstance | null>;
  /** VMM version string, for snapshots and `kiln doctor`. */
  version(): Promise<string>;
  /**
   * The guest kernel command line for this VMM: its own console/reboot/timing arguments,
   * then `extra` (kiln's and the user's) in order.
   */
  kernelCmdline(accelerator: Accelerator, extra: readonly string[]): string;
}

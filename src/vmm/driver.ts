// The interface every VMM backend implements. The rest of kiln sees only this file;
// src/vmm/registry.ts is the one module that imports a backend's folder.

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
  /** Stops the VMM at once (no guest shutdown) and waits for the process to be gone. */
  kill(): Promise<void>;
  /** Drops kilnd's connections without stopping the VMM (daemon shutdown / restart). */
  detach(): void;
}

export interface VmmDriver {
  readonly name: BackendName;
  /** Spawns a detached VMM for `spec` and starts the guest. Cleans up after itself on failure. */
  start(spec: VmSpec, signal?: AbortSignal): Promise<VmmInstance>;
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

// Admission control: every VM that holds a VMM (running, booting, paused, being made or being
// stopped) commits vCPUs and memory; a create that would push the total past the host's
// capacity is refused with KILN_ERR_CAPACITY before anything is made for it. What counts is
// read from the store, not kept in a counter of its own, so a crash, a restart or a VM that
// failed half-way can never leave capacity leaked: the store is the only ledger.
//
// The check and the insert of the new VM's record run as one serial section, so N concurrent
// creates cannot all pass a check that only one of them fits.
import { KilnError } from '../errors.ts';
import type { VmRecord, VmState } from '../store/store.ts';

/** States whose VM holds (or is about to hold) a VMM process and its memory. */
export const COMMITTING_STATES: readonly VmState[] = ['creating', 'booting', 'ready', 'paused', 'stopping'];

export interface CapacityConfig {
  /** vCPUs committed per host CPU (KILN_CPU_OVERCOMMIT). Guests idle most of the time. */
  cpuOvercommit: number;
  /** Guest memory committed per MiB of host memory left to VMs (KILN_MEMORY_OVERCOMMIT). */
  memoryOvercommit: number;
  /** Host memory kept for the host itself, kilnd and page cache (KILN_HOST_RESERVED_MIB). */
  reservedMemoryMib: number;
  /** Counted per VM on top of its guest memory: the VMM's own heap, device and TCG buffers. */
  vmmOverheadMib: number;
}

export interface Demand {
  vcpus: number;
  memoryMib: number;
}

export interface CapacityReport {
  vcpus: { committed: number; capacity: number };
  memory_mib: { committed: number; capacity: number };
  vms: number;
}

export class Admission {
  readonly capacity: Demand;
  #serial: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly config: CapacityConfig,
    host: Demand,
    private readonly listVms: () => Promise<Pick<VmRecord, 'vcpus' | 'memoryMib' | 'state'>[]>,
  ) {
    this.capacity = {
      vcpus: Math.floor(host.vcpus * config.cpuOvercommit),
      memoryMib: Math.floor(Math.max(0, host.memoryMib - config.reservedMemoryMib) * config.memoryOvercommit),
    };
  }

  /** What a VM of this size commits: its vCPUs, its memory plus the VMM's overhead. */
  demandOf(vm: Demand): Demand {
    return { vcpus: vm.vcpus, memoryMib: vm.memoryMib + this.config.vmmOverheadMib };
  }

  async report(): Promise<CapacityReport> {
    const { committed, vms } = await this.committed();
    return {
      vcpus: { committed: committed.vcpus, capacity: this.capacity.vcpus },
      memory_mib: { committed: committed.memoryMib, capacity: this.capacity.memoryMib },
      vms,
    };
  }

  /**
   * Runs `commit` (which must make the VM's store record, in a committing state) only if the
   * VM fits; throws KILN_ERR_CAPACITY otherwise. Serial with every other admit().
   */
  admit<T>(vm: Demand, commit: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(async () => {
      const want = this.demandOf(vm);
      const { committed } = await this.committed();
      const over: string[] = [];
      if (committed.vcpus + want.vcpus > this.capacity.vcpus) over.push(`vCPUs: ${committed.vcpus} committed + ${want.vcpus} asked > ${this.capacity.vcpus}`);
      if (committed.memoryMib + want.memoryMib > this.capacity.memoryMib) {
        over.push(`memory: ${committed.memoryMib} MiB committed + ${want.memoryMib} MiB asked > ${this.capacity.memoryMib} MiB`);
      }
      if (over.length) {
        throw new KilnError('KILN_ERR_CAPACITY', `this host is at capacity (${over.join('; ')}); retry when VMs have been deleted, or raise KILN_CPU_OVERCOMMIT / KILN_MEMORY_OVERCOMMIT`, {
          requested: want,
          committed,
          capacity: this.capacity,
        });
      }
      return commit();
    });
    // The chain goes on whatever this admit's outcome was.
    this.#serial = run.catch(() => {});
    return run;
  }

  private async committed(): Promise<{ committed: Demand; vms: number }> {
    const committed: Demand = { vcpus: 0, memoryMib: 0 };
    let vms = 0;
    for (const vm of await this.listVms()) {
      if (!COMMITTING_STATES.includes(vm.state)) continue;
      const d = this.demandOf(vm);
      committed.vcpus += d.vcpus;
      committed.memoryMib += d.memoryMib;
      vms++;
    }
    return { committed, vms };
  }
}

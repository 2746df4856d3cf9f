// The VM aggregate on PostgreSQL: VM rows, their published ports, address leases, boot
// phases and container state (a container is a VM plus its restart policy's bookkeeping).
import { KilnError } from '../../errors.ts';
import { containerFromRow, containerToRow, patchColumns, vmFromRow, vmToRow, type Row } from '../rows.ts';
import type { ContainerRecord, PhaseRecord, VmRecord, VmState } from '../store.ts';
import { LOCKS, mapUnique, type PgDb } from './db.ts';

type VmPatch = Partial<Omit<VmRecord, 'id' | 'createdAt'>>;

const VM_COLUMNS = Object.keys(vmToRow({} as VmRecord));

export class PgVmRepo {
  constructor(private readonly db: PgDb) {}

  async insertVm(vm: VmRecord): Promise<void> {
    const row = vmToRow(vm);
    const params = VM_COLUMNS.map((c) => row[c] ?? null);
    await mapUnique(
      () =>
        this.db.tx(async (c) => {
          await this.db.exec(`INSERT INTO vms (${VM_COLUMNS.join(', ')}) VALUES (${VM_COLUMNS.map((_, i) => `$${i + 1}`).join(', ')})`, params, c);
          for (const p of vm.ports) {
            await mapUnique(
              () => this.db.exec('INSERT INTO published_ports (proto, host_port, vm_id, guest_port) VALUES ($1, $2, $3, $4)', [p.proto, p.hostPort, vm.id, p.guestPort], c),
              { published_ports_pkey: ['KILN_ERR_PORT_CONFLICT', `host port ${p.proto}/${p.hostPort} is already published by another VM`] },
            );
          }
        }),
      { vms_name_key: ['KILN_ERR_NAME_CONFLICT', `a VM named ${JSON.stringify(vm.name)} already exists`] },
    );
  }

  async updateVm(id: string, patch: VmPatch): Promise<VmRecord> {
    const row = await this.db.updateColumns('vms', id, patchColumns(patch, vmToRow, ['id', 'createdAt']), { updated_at: Date.now() }, undefined, { byIdOrName: true });
    if (!row) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${id}`);
    return vmFromRow(row);
  }

  async transitionVm(id: string, from: readonly VmState[], patch: VmPatch): Promise<VmRecord | null> {
    const row = await this.db.updateColumns('vms', id, patchColumns(patch, vmToRow, ['id', 'createdAt']), { updated_at: Date.now() }, from);
    return row ? vmFromRow(row) : null;
  }

  async getVm(idOrName: string): Promise<VmRecord | null> {
    const row = await this.db.row('SELECT * FROM vms WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1', [idOrName]);
    return row ? vmFromRow(row) : null;
  }

  async listVms(): Promise<VmRecord[]> {
    return (await this.db.rows('SELECT * FROM vms ORDER BY created_at, id')).map(vmFromRow);
  }

  async deleteVm(id: string): Promise<void> {
    await this.db.exec('DELETE FROM vms WHERE id = $1', [id]);
  }

  async countVmsUsingImage(imageId: string): Promise<number> {
    return Number((await this.db.row('SELECT COUNT(*)::int AS n FROM vms WHERE image_id = $1', [imageId]))!.n);
  }

  async assignIp(vmId: string, pick: (taken: ReadonlySet<string>) => string | null): Promise<string | null> {
    return this.db.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [LOCKS.ipLease]);
      const taken = new Set((await this.db.rows('SELECT ip FROM vms WHERE ip IS NOT NULL', [], c)).map((r) => r.ip as string));
      const ip = pick(taken);
      if (ip !== null) await this.db.exec('UPDATE vms SET ip = $1 WHERE id = $2', [ip, vmId], c);
      return ip;
    });
  }

  async recordPhase(p: PhaseRecord): Promise<void> {
    await this.db.exec(
      `INSERT INTO phases (vm_id, boot, name, started_at, ended_at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (vm_id, boot, name) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at`,
      [p.vmId, p.boot, p.name, p.startedAt, p.endedAt],
    );
  }

  async listPhases(vmId: string, boot: number): Promise<PhaseRecord[]> {
    return (await this.db.rows('SELECT * FROM phases WHERE vm_id = $1 AND boot = $2 ORDER BY started_at, ord', [vmId, boot])).map((r: Row) => ({
      vmId: r.vm_id as string,
      boot: r.boot as number,
      name: r.name as string,
      startedAt: r.started_at as number,
      endedAt: (r.ended_at as number | null) ?? null,
    }));
  }

  async insertContainer(c: ContainerRecord): Promise<void> {
    const row = containerToRow(c);
    const cols = Object.keys(row);
    await this.db.exec(`INSERT INTO containers (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')})`, cols.map((k) => row[k] ?? null));
  }

  async updateContainer(id: string, patch: Partial<Omit<ContainerRecord, 'id' | 'createdAt'>>): Promise<ContainerRecord> {
    const row = await this.db.updateColumns('containers', id, patchColumns(patch, containerToRow, ['id', 'createdAt']));
    if (!row) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${id}`);
    return containerFromRow(row);
  }

  async getContainer(id: string): Promise<ContainerRecord | null> {
    const row = await this.db.row('SELECT * FROM containers WHERE id = $1', [id]);
    return row ? containerFromRow(row) : null;
  }

  async listContainers(): Promise<ContainerRecord[]> {
    return (await this.db.rows('SELECT * FROM containers ORDER BY created_at, id')).map(containerFromRow);
  }
}

// What a node reports with each heartbeat, from the sources of truth it already has:
// admission (committed vs capacity, read from the store), the state dir's filesystem, the
// images it holds a copy of and its warm function pools.
import fs from 'node:fs/promises';
import type { ImageService } from '../image/image-service.ts';
import type { Admission } from '../vm/admission.ts';
import type { NodeCapacity } from '../store/store.ts';

export interface CapacitySources {
  admission: Admission;
  /** Its images: the ones it holds a copy of (image_copies), not the cluster's catalogue. */
  images: Pick<ImageService, 'localImageIds'>;
  stateDir: string;
  /** Warm pool contents (FunctionService.pool.describe()). */
  warm?: () => { runtime: string; vcpus: number; memory_mib: number; ready: number }[];
  /** Functions served here → ready instances (FunctionService.served()). */
  functions?: () => Record<string, number>;
}

export async function nodeCapacity(s: CapacitySources): Promise<NodeCapacity> {
  const r = await s.admission.report();
  const fsStat = await fs.statfs(s.stateDir);
  const images = await s.images.localImageIds();
  const warm: Record<string, number> = {};
  for (const p of s.warm?.() ?? []) warm[`${p.runtime}/${p.vcpus}x${p.memory_mib}`] = p.ready;
  return {
    vcpus: r.vcpus.capacity,
    memoryMib: r.memory_mib.capacity,
    committedVcpus: r.vcpus.committed,
    committedMemoryMib: r.memory_mib.committed,
    vms: r.vms,
    diskFreeBytes: Number(fsStat.bavail) * Number(fsStat.bsize),
    images,
    warm,
    ...(s.functions ? { functions: s.functions() } : {}),
  };
}

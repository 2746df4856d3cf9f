// Placement: which node runs a new VM. Best of K: sample K ready nodes that can fit the VM at
// random and take the one with the most free capacity (image locality breaking near-ties).
// Sampling instead of scanning for the global best keeps API instances that decide at the
// same time from all picking the same emptiest node (the herd effect of "least loaded"),
// while still steering away from full nodes (Mitzenmacher's power of d choices).
import type { NodeRecord } from '../store/store.ts';

export interface PlacementDemand {
  vcpus: number;
  memoryMib: number;
  /** The image the VM boots: a node that has it skips the pull/convert. */
  imageId?: string;
  /**
   * Nodes (ids) with a local advantage beyond the image, e.g. an E2B template's snapshot and
   * warm clone pool (src/cluster/api-e2b.ts): the same bonus as a cached image.
   */
  local?: ReadonlySet<string>;
}

export interface PlacementOptions {
  /** How many candidates to compare (default 2); K ≥ node count compares them all. */
  k?: number;
  random?: () => number;
}

/** Free fraction of the node's tighter resource after placing `d` (negative: does not fit). */
export function headroom(n: NodeRecord, d: PlacementDemand): number {
  const c = n.capacity;
  const cpu = c.vcpus > 0 ? (c.vcpus - c.committedVcpus - d.vcpus) / c.vcpus : -1;
  const mem = c.memoryMib > 0 ? (c.memoryMib - c.committedMemoryMib - d.memoryMib) / c.memoryMib : -1;
  return Math.min(cpu, mem);
}

/** Score of a candidate: headroom, plus a bonus worth a tenth of a node for a cached image (or other locality). */
export function score(n: NodeRecord, d: PlacementDemand): number {
  const local = (d.imageId && n.capacity.images.includes(d.imageId)) || d.local?.has(n.id);
  return headroom(n, d) + (local ? 0.1 : 0);
}

/** The chosen node, or null when no ready node can fit the VM. */
export function place(nodes: readonly NodeRecord[], d: PlacementDemand, o: PlacementOptions = {}): NodeRecord | null {
  const random = o.random ?? Math.random;
  const fits = nodes.filter((n) => n.state === 'ready' && headroom(n, d) >= 0);
  if (fits.length === 0) return null;
  const k = Math.max(1, o.k ?? 2);
  // Partial Fisher–Yates: the first k entries become a uniform sample without replacement.
  const pool = [...fits];
  const take = Math.min(k, pool.length);
  for (let i = 0; i < take; i++) {
    const j = i + Math.floor(random() * (pool.length - i));
    [pool[i], pool[j]] = [pool[j]!, pool[i]!];
  }
  let best = pool[0]!;
  for (const n of pool.slice(1, take)) if (score(n, d) > score(best, d)) best = n;
  return best;
}

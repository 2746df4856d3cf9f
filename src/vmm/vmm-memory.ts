// A VMM's own memory: what its process has resident minus the guest's RAM. Firecracker's
// figure ("VMM memory overhead ≤ 5 MiB") is this, so bench/provision measures it the same
// way for either backend: every mapping of /proc/<pid>/smaps except the guest memory region(s).
import fs from 'node:fs/promises';

export interface VmmMemory {
  /** Resident KiB outside guest memory. */
  overheadKib: number;
  /** Resident KiB of the guest memory region(s). */
  guestKib: number;
}

interface Mapping {
  sizeKib: number;
  rssKib: number;
  anonymous: boolean;
}

function parseSmaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | null = null;
  for (const line of text.split('\n')) {
    // A mapping header: "start-end perms offset dev inode [path]".
    const head = /^([0-9a-f]+)-([0-9a-f]+)\s+\S{4}\s+\S+\s+\S+\s+\d+\s*(.*)$/.exec(line);
    if (head) {
      cur = { sizeKib: Number((BigInt(`0x${head[2]}`) - BigInt(`0x${head[1]}`)) / 1024n), rssKib: 0, anonymous: !head[3] };
      out.push(cur);
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && cur) cur.rssKib = Number(rss[1]);
  }
  return out;
}

/**
 * Splits resident memory into guest RAM and the rest. Guest RAM is the anonymous mappings
 * whose sizes add up to the configured memory: one region below the 32-bit PCI hole, or two
 * around it for guests above ~3 GiB (x86_64).
 */
export function vmmMemoryFromSmaps(smaps: string, guestMemoryMib: number): VmmMemory {
  const maps = parseSmaps(smaps);
  const guestKib = guestMemoryMib * 1024;
  let guest: Mapping[] = maps.filter((m) => m.anonymous && m.sizeKib === guestKib).slice(0, 1);
  if (!guest.length) {
    // Split layout: the two largest anonymous regions that together make the guest's RAM.
    const big = maps.filter((m) => m.anonymous).sort((a, b) => b.sizeKib - a.sizeKib);
    for (let i = 0; i < big.length && !guest.length; i++) {
      const j = big.findIndex((m, k) => k !== i && m.sizeKib + big[i]!.sizeKib === guestKib);
      if (j >= 0) guest = [big[i]!, big[j]!];
    }
  }
  const inGuest = new Set(guest);
  let overheadKib = 0;
  let guestRss = 0;
  for (const m of maps) {
    if (inGuest.has(m)) guestRss += m.rssKib;
    else overheadKib += m.rssKib;
  }
  return { overheadKib, guestKib: guestRss };
}

export async function vmmMemory(pid: number, guestMemoryMib: number): Promise<VmmMemory> {
  return vmmMemoryFromSmaps(await fs.readFile(`/proc/${pid}/smaps`, 'utf8'), guestMemoryMib);
}

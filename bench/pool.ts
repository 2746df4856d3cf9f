// Benches measure a create from a full clone pool: the refill is background work, not the
// create's. Waits until the pool of `snapshot` (every snapshot's, when omitted) is full.
import type { KilnClient } from '../src/sdk/client.ts';
import { until } from '../test/helpers/until.ts';

export async function poolFull(client: KilnClient, snapshot?: string): Promise<void> {
  await until(`a full clone pool${snapshot ? ` for ${snapshot}` : ''}`, async () => {
    const c = (await client.health()).pools.clones;
    if (c.size === 0) return true;
    if (snapshot) return (c.by_snapshot.find((b) => b.snapshot === snapshot)?.ready ?? 0) >= c.size;
    return c.by_snapshot.length > 0 && c.by_snapshot.every((b) => b.ready >= c.size) && c.filling === 0;
  }, 600_000);
}

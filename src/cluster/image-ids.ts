// The image a create names (id or name) → its id, for placement's image locality, remembered
// for a few seconds so that a burst of creates does not ask the store each time (one round trip
// less per create). A stale answer only misplaces the locality bonus: the node resolves the
// image itself when it creates the VM.
import type { Store } from '../store/store.ts';

export class ImageIds {
  private readonly known = new Map<string, { id: string | undefined; at: number }>();

  constructor(
    private readonly store: Pick<Store, 'getImage'>,
    private readonly ttlMs = 5_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** The image's id, or undefined when the store has none by that id or name. */
  async resolve(ref: string): Promise<string | undefined> {
    const hit = this.known.get(ref);
    if (hit && this.now() - hit.at < this.ttlMs) return hit.id;
    const id = (await this.store.getImage(ref))?.id;
    // Bounded: a client naming endless images must not grow this without limit.
    if (this.known.size >= 1024) this.known.clear();
    this.known.set(ref, { id, at: this.now() });
    return id;
  }
}

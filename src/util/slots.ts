// A counting semaphore handing out release functions: a slot is taken in one place (before a
// VM's boot) and given back in another (when the guest is ready or has failed), so it is not
// a scoped `limit(fn)`. FIFO: creates are served in the order they came. Releasing twice is
// harmless (every exit path of a boot may release).

export class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(readonly size: number) {
    this.#free = size;
  }

  /** Slots in use, and callers waiting for one. */
  get usage(): { used: number; waiting: number } {
    return { used: this.size - this.#free, waiting: this.#waiting.length };
  }

  /** Resolves with the release once a slot is free; `waited` says whether it had to queue. */
  async acquire(): Promise<{ release: () => void; waited: boolean }> {
    let waited = false;
    if (this.#free > 0) this.#free--;
    else {
      waited = true;
      await new Promise<void>((r) => this.#waiting.push(r));
    }
    let done = false;
    const release = () => {
      if (done) return;
      done = true;
      const next = this.#waiting.shift();
      // The slot passes straight to the next waiter: it is never free in between.
      if (next) next();
      else this.#free++;
    };
    return { release, waited };
  }
}

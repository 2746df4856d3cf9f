// Ordered, named steps and the cleanup stack they share. Boot is a StepList; restore,
// jailer and backends edit the list (insert after a named anchor, remove, replace) instead
// of forking the code path, and an edit whose anchor is missing fails loudly. Step names
// are the provisioning timeline's phase names.
import { KilnError } from '../errors.ts';

export interface Step<C> {
  readonly name: string;
  run(ctx: C): Promise<void>;
  /**
   * Runs at the same time as the adjacent steps that say so (independent work, e.g. a clone's
   * drive copies and its network namespace). The batch ends when all of them settled; the
   * first failure is reported, after every step of the batch registered what it made.
   */
  readonly concurrent?: boolean;
}

export class StepList<C> {
  #steps: Step<C>[];

  constructor(steps: Iterable<Step<C>> = []) {
    this.#steps = [...steps];
    const dup = this.#steps.find((s, i) => this.#steps.findIndex((o) => o.name === s.name) !== i);
    if (dup) throw new KilnError('KILN_ERR_INTERNAL', `step ${dup.name} appears twice`);
  }

  get names(): string[] {
    return this.#steps.map((s) => s.name);
  }

  get steps(): readonly Step<C>[] {
    return this.#steps;
  }

  has(name: string): boolean {
    return this.#steps.some((s) => s.name === name);
  }

  #index(name: string, edit: string): number {
    const i = this.#steps.findIndex((s) => s.name === name);
    if (i < 0) {
      throw new KilnError('KILN_ERR_INTERNAL', `cannot ${edit}: no step named ${name} in [${this.names.join(', ')}]`);
    }
    return i;
  }

  #assertNew(steps: Step<C>[]): void {
    for (const s of steps) {
      if (this.has(s.name)) throw new KilnError('KILN_ERR_INTERNAL', `step ${s.name} is already in the list`);
    }
  }

  insertAfter(anchor: string, ...steps: Step<C>[]): this {
    const i = this.#index(anchor, `insert after ${anchor}`);
    this.#assertNew(steps);
    this.#steps.splice(i + 1, 0, ...steps);
    return this;
  }

  insertBefore(anchor: string, ...steps: Step<C>[]): this {
    const i = this.#index(anchor, `insert before ${anchor}`);
    this.#assertNew(steps);
    this.#steps.splice(i, 0, ...steps);
    return this;
  }

  append(...steps: Step<C>[]): this {
    this.#assertNew(steps);
    this.#steps.push(...steps);
    return this;
  }

  replace(name: string, step: Step<C>): this {
    const i = this.#index(name, `replace ${name}`);
    if (step.name !== name) this.#assertNew([step]);
    this.#steps[i] = step;
    return this;
  }

  remove(...names: string[]): this {
    for (const n of names) this.#steps.splice(this.#index(n, `remove ${n}`), 1);
    return this;
  }
}

// The cleanup stack steps register their undo on; re-exported for step lists.
export { CleanupStack } from './cleanup-stack.ts';

export interface StepEvent {
  step: string;
  ms: number;
  error?: unknown;
}

/** Consecutive concurrent steps form one batch; every other step is a batch of its own. */
export function batches<C>(steps: readonly Step<C>[]): Step<C>[][] {
  const out: Step<C>[][] = [];
  for (const s of steps) {
    const last = out.at(-1);
    if (s.concurrent && last?.[0]?.concurrent) last.push(s);
    else out.push([s]);
  }
  return out;
}

/** Wraps each step's run (a timeline's phase, a failpoint); default: runs it. */
export type StepAround = (name: string, run: () => Promise<void>) => Promise<void>;

/** Runs the steps in order; stops at the first failure or when `signal` aborts. */
export async function runSteps<C>(
  list: StepList<C>,
  ctx: C,
  opts: { signal?: AbortSignal; onStep?: (e: StepEvent) => void; around?: StepAround } = {},
): Promise<void> {
  const around: StepAround = opts.around ?? ((_name, run) => run());
  const one = async (step: Step<C>): Promise<void> => {
    const t0 = performance.now();
    try {
      await around(step.name, () => step.run(ctx));
    } catch (error) {
      opts.onStep?.({ step: step.name, ms: performance.now() - t0, error });
      throw error;
    }
    opts.onStep?.({ step: step.name, ms: performance.now() - t0 });
  };
  for (const batch of batches(list.steps)) {
    if (opts.signal?.aborted) {
      throw new KilnError('KILN_ERR_VMM_FAILED', `aborted before ${batch[0]!.name}: ${String(opts.signal.reason ?? 'aborted')}`, { step: batch[0]!.name });
    }
    if (batch.length === 1) {
      await one(batch[0]!);
      continue;
    }
    const settled = await Promise.allSettled(batch.map(one));
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
  }
}

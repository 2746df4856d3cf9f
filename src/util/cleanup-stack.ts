// Each provisioning step that creates something registers how to undo it. On failure the
// stack runs once, in reverse, and every undo runs even if an earlier one failed; all
// failures are reported together.
import { KilnError } from '../errors.ts';

export interface CleanupFailure {
  name: string;
  error: unknown;
}

export class CleanupStack {
  #undo: { name: string; fn: () => Promise<void> | void }[] = [];
  #ran = false;

  push(name: string, fn: () => Promise<void> | void): void {
    if (this.#ran) throw new KilnError('KILN_ERR_INTERNAL', `cleanup already ran; cannot register ${name}`);
    this.#undo.push({ name, fn });
  }

  get size(): number {
    return this.#undo.length;
  }

  /** Forget everything registered: the resources now belong to someone else (a running VM). */
  release(): void {
    this.#undo = [];
  }

  async run(): Promise<CleanupFailure[]> {
    if (this.#ran) return [];
    this.#ran = true;
    const failures: CleanupFailure[] = [];
    for (const { name, fn } of this.#undo.reverse()) {
      try {
        await fn();
      } catch (error) {
        failures.push({ name, error });
      }
    }
    this.#undo = [];
    return failures;
  }
}

export function describeFailures(failures: CleanupFailure[]): string {
  return failures.map((f) => `${f.name}: ${(f.error as Error)?.message ?? String(f.error)}`).join('; ');
}

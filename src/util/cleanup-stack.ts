// Each provisioning step that creates something registers how to undo it. On failure the
// stack runs once, in reverse, and every undo runs even if an earlier one failed.
export class CleanupStack {
  private readonly undos: { name: string; fn: () => Promise<void> | void }[] = [];

  push(name: string, fn: () => Promise<void> | void): void {
    this.undos.push({ name, fn });
  }

  /** Forget everything registered: the resources now belong to a running VM. */
  release(): void {
    this.undos.length = 0;
  }

  async run(): Promise<Error[]> {
    const errors: Error[] = [];
    while (this.undos.length) {
      const { name, fn } = this.undos.pop()!;
      try {
        await fn();
      } catch (e) {
        errors.push(new Error(`undo ${name}: ${(e as Error).message}`, { cause: e }));
      }
    }
    return errors;
  }
}

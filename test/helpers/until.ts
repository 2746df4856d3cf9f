// Waits in tests and benches on something that happens in the background (an instance reaped,
// a template built, a server in a guest starting to answer); never used for what an API call
// can await. Every wait has a deadline and names what it waited for when it runs out.

/** Resolves with fn()'s first truthy value; throws naming `what` after `timeoutMs`. */
export async function until<T>(
  what: string,
  fn: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs = 60_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Resolves with fn()'s first result that does not throw, retrying with backoff (50 ms doubling
 * to 1 s); after `timeoutMs` throws naming `what`, with the last failure as its cause.
 */
export async function eventually<T>(what: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${what}: still failing after ${timeoutMs} ms: ${(e as Error).message ?? e}`, { cause: e });
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

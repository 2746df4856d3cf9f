// E2B's error shape: the HTTP status is the code, the body is {code, message} (the SDK reads
// `error.code === 404` and `error.message`). kiln's own errors (KilnError) keep their status
// and carry their stable kiln code inside the message, so nothing is lost in translation.
import { isKilnError } from '../errors.ts';

export class E2bError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function e2bErrorBody(err: unknown): { code: number; message: string } {
  if (err instanceof E2bError) return { code: err.status, message: err.message };
  if (isKilnError(err)) return { code: err.status, message: `${err.code}: ${err.message}` };
  return { code: 500, message: (err as Error).message ?? String(err) };
}

export const notFound = (id: string) => new E2bError(404, `sandbox "${id}" doesn't exist or you don't have access to it`);

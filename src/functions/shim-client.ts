// kilnd's side of the shim protocol (src/functions/shims/*): HTTP/1.1 over the VM's bridge
// address with kept-alive connections (one per concurrent call), so a warm invoke costs one
// request/response on an open socket. Every answer is guest data: parsed defensively.
import { Pool } from 'undici';
import { KilnError } from '../errors.ts';

export interface GuestError {
  type: string;
  message: string;
  stack: string | null;
}

export interface ShimInvokeResult {
  ok: boolean;
  result?: unknown;
  error?: GuestError;
  logs: string;
  logsTruncated: boolean;
  /** Handler time measured in the guest. */
  guestMs: number;
}

export interface ShimLoadRequest {
  function: string;
  version: number;
  handler: string;
  env: Record<string, string>;
  files: { path: string; mode: number; data: string; symlink?: string }[];
}

/** Answers bigger than this are a misbehaving guest (results are JSON the caller receives). */
const MAX_ANSWER = 32 * 1024 * 1024;

export class ShimClient {
  private readonly pool: Pool;

  /** `key`: the instance's shim key (src/functions/instance-source.ts), sent with every request. */
  constructor(readonly ip: string, readonly port: number, connections: number, private readonly key: string) {
    this.pool = new Pool(`http://${ip}:${port}`, {
      connections: Math.max(1, connections),
      pipelining: 1,
      keepAliveTimeout: 600_000,
      keepAliveMaxTimeout: 600_000,
      headersTimeout: 0,
      bodyTimeout: 0,
      connect: { timeout: 5_000, noDelay: true },
    });
  }

  /** Waits for the shim to listen: a refused connection means "not yet", retried with backoff. */
  async waitHealthy(deadline: number, alive: () => Promise<boolean> = async () => true): Promise<{ pid: number }> {
    let delay = 10;
    let last = 'no answer';
    for (;;) {
      if (!(await alive())) throw new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', `the VM at ${this.ip} went away before its runtime shim answered`);
      try {
        const h = (await this.request('GET', '/health', undefined, AbortSignal.timeout(Math.max(100, deadline - Date.now())))) as { ok?: boolean; pid?: number; error?: { type?: unknown } };
        if (h.ok) return { pid: Number(h.pid) };
        last = `answered ${JSON.stringify(h.error?.type ?? 'not ok')}`;
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() + delay > deadline) throw new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', `the runtime shim at ${this.ip}:${this.port} did not answer: ${last}`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 200);
    }
  }

  async load(req: ShimLoadRequest, signal: AbortSignal): Promise<{ ok: true } | { ok: false; error: GuestError }> {
    const a = (await this.request('POST', '/load', JSON.stringify(req), signal)) as { ok?: unknown; error?: unknown };
    if (a.ok === true) return { ok: true };
    return { ok: false, error: guestError(a.error) };
  }

  async invoke(body: { id: string; event: unknown; deadline_ms: number }, signal: AbortSignal): Promise<ShimInvokeResult> {
    const a = (await this.request('POST', '/invoke', JSON.stringify(body), signal)) as Record<string, unknown>;
    if (typeof a !== 'object' || a === null || typeof a.ok !== 'boolean') throw new KilnError('KILN_ERR_AGENT_PROTOCOL', 'the runtime shim sent a malformed answer');
    return {
      ok: a.ok,
      result: a.result,
      error: a.ok ? undefined : guestError(a.error),
      logs: typeof a.logs === 'string' ? a.logs : '',
      logsTruncated: a.logs_truncated === true,
      guestMs: typeof a.duration_ms === 'number' ? a.duration_ms : NaN,
    };
  }

  private async request(method: 'GET' | 'POST', path: string, body: string | undefined, signal: AbortSignal): Promise<unknown> {
    const headers: Record<string, string> = { 'x-kiln-shim-key': this.key };
    if (body) headers['content-type'] = 'application/json';
    const res = await this.pool.request({ method, path, body, signal, headers });
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of res.body) {
      n += (c as Buffer).length;
      if (n > MAX_ANSWER) {
        res.body.destroy();
        throw new KilnError('KILN_ERR_AGENT_PROTOCOL', `the runtime shim's answer exceeds ${MAX_ANSWER} bytes`);
      }
      chunks.push(c as Buffer);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    try {
      return JSON.parse(text);
    } catch {
      throw new KilnError('KILN_ERR_AGENT_PROTOCOL', `the runtime shim answered ${res.statusCode} with non-JSON: ${text.slice(0, 200)}`);
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy().catch(() => {});
  }
}

function guestError(e: unknown): GuestError {
  const o = (typeof e === 'object' && e !== null ? e : {}) as Record<string, unknown>;
  return {
    type: typeof o.type === 'string' ? o.type.slice(0, 200) : 'Error',
    message: typeof o.message === 'string' ? o.message.slice(0, 64 * 1024) : String(e),
    stack: typeof o.stack === 'string' ? o.stack.slice(0, 64 * 1024) : null,
  };
}

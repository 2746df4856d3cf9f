// Minimal HTTP(S) client for registry traffic, on node:http/https rather than fetch: pulls
// need per-request TLS verification control (insecure registries), Range requests, an idle
// timeout on the body, and redirects that drop credentials when they leave the origin
// (blob downloads are commonly redirected to object storage).
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';

export interface HttpRequestOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Skip TLS certificate verification (insecure registries only). */
  insecureTls?: boolean;
  signal?: AbortSignal;
  /** Destroy the request if the socket sees no traffic for this long (default 60 s). */
  idleTimeoutMs?: number;
  maxRedirects?: number;
}

export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** Unconsumed body; the caller must read or destroy it. */
  body: IncomingMessage;
  /** Final URL after redirects. */
  url: URL;
}

/** A failure of the transport (refused, reset, timed out, dropped mid-body): worth retrying. */
export class TransportError extends Error {
  constructor(message: string, readonly errno?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransportError';
  }
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

function once(url: URL, opts: HttpRequestOptions, headers: Record<string, string>): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.request(url, {
      method: opts.method ?? 'GET',
      headers,
      signal: opts.signal,
      ...(url.protocol === 'https:' ? { rejectUnauthorized: !opts.insecureTls } : {}),
    });
    req.setTimeout(opts.idleTimeoutMs ?? 60_000, () => {
      req.destroy(new TransportError(`no data from ${url.host} for ${opts.idleTimeoutMs ?? 60_000} ms`, 'ETIMEDOUT'));
    });
    req.on('response', (res) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res, url }));
    req.on('error', (e) => {
      if (e.name === 'AbortError') return reject(e);
      if (e instanceof TransportError) return reject(e);
      const code = (e as NodeJS.ErrnoException).code;
      reject(new TransportError(`${url.protocol}//${url.host}: ${e.message}`, code, { cause: e }));
    });
    req.end();
  });
}

export async function httpRequest(url: URL, opts: HttpRequestOptions = {}): Promise<HttpResponse> {
  let current = url;
  let headers = { ...(opts.headers ?? {}) };
  for (let hop = 0; ; hop++) {
    const res = await once(current, opts, headers);
    const location = res.headers.location;
    if (!REDIRECTS.has(res.status) || !location) return res;
    res.body.resume();
    if (hop >= (opts.maxRedirects ?? 5)) throw new TransportError(`too many redirects from ${url.href}`);
    const next = new URL(location, current);
    if (next.origin !== current.origin) {
      // Credentials are for the registry, never for wherever it redirects to.
      headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization'));
    }
    if (current.protocol === 'https:' && next.protocol !== 'https:') {
      throw new TransportError(`refusing redirect from HTTPS to ${next.protocol} (${next.host})`);
    }
    current = next;
  }
}

/** Reads a whole (small) body, refusing more than `limit` bytes. */
export async function readBody(res: HttpResponse, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length;
      if (size > limit) {
        res.body.destroy();
        throw new RangeError(`response from ${res.url.host} is larger than ${limit} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (e) {
    if (e instanceof RangeError) throw e;
    throw new TransportError(`${res.url.host}: connection dropped while reading the response: ${(e as Error).message}`, (e as NodeJS.ErrnoException).code, { cause: e });
  }
  return Buffer.concat(chunks);
}

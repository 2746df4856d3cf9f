// The dashboard's only way to kilnd: the REST API with the bearer token, the event stream
// (/v1/events over fetch, since EventSource cannot send a header) and the console WebSocket
// (token as a subprotocol, since browsers cannot set headers on a WebSocket).

const TOKEN_KEY = 'kiln-token';
export const WS_PROTOCOL = 'kiln.v1';
export const WS_TOKEN_PREFIX = 'kiln.token.';

/** An API refusal as kilnd sent it: stable code, message, HTTP status. */
export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message @param {unknown} [details] */
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export class Api {
  /**
   * @param {{storage?: Storage, fetch?: typeof fetch, askToken?: (reason: string) => Promise<string>}} opts
   * The token lives in the tab's sessionStorage: asked once, kept across reloads, gone with the tab.
   */
  constructor(opts = {}) {
    this.storage = opts.storage ?? globalThis.sessionStorage;
    this.fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.askToken = opts.askToken ?? (async () => '');
  }

  get token() {
    return this.storage.getItem(TOKEN_KEY) ?? '';
  }
  set token(t) {
    if (t) this.storage.setItem(TOKEN_KEY, t);
    else this.storage.removeItem(TOKEN_KEY);
  }

  headers(extra = {}) {
    return { ...extra, ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) };
  }

  /**
   * One request; JSON in and out. A 401 asks for the token and tries again (once per answer);
   * any other refusal throws an ApiError with kilnd's code and message.
   * @param {string} method @param {string} path @param {unknown} [body]
   */
  async request(method, path, body) {
    for (;;) {
      const init = { method, headers: this.headers(body === undefined ? {} : { 'content-type': 'application/json' }), ...(body === undefined ? {} : { body: JSON.stringify(body) }) };
      const res = await this.fetch(path, init);
      const type = res.headers.get('content-type') ?? '';
      const data = res.status === 204 ? null : type.includes('json') ? await res.json().catch(() => null) : await res.text();
      if (res.status === 401) {
        const t = await this.askToken(this.token ? 'wrong token: kilnd refused it' : 'this kilnd needs its API token');
        if (!t) throw new ApiError(401, data?.code ?? 'KILN_ERR_UNAUTHORIZED', data?.message ?? 'no token given');
        this.token = t;
        continue;
      }
      if (!res.ok) throw new ApiError(res.status, data?.code ?? `HTTP_${res.status}`, data?.message ?? String(data ?? res.statusText), data?.details);
      return data;
    }
  }
  get(path) {
    return this.request('GET', path);
  }
  post(path, body) {
    return this.request('POST', path, body);
  }
  put(path, body) {
    return this.request('PUT', path, body);
  }
  del(path) {
    return this.request('DELETE', path);
  }

  /**
   * Follows /v1/events until `signal` aborts; reconnects after a drop, resuming from the last
   * sequence number seen (so nothing is missed or repeated). `onStatus` gets 'live' / 'retrying'.
   * @param {(e: any) => void} onEvent @param {(s: string) => void} onStatus @param {AbortSignal} signal
   */
  async follow(onEvent, onStatus, signal, since = null) {
    let last = since;
    while (!signal.aborted) {
      try {
        const res = await this.fetch(`/v1/events${last !== null ? `?since=${last}` : ''}`, { headers: this.headers(), signal });
        if (res.status === 401) {
          const t = await this.askToken('this kilnd needs its API token');
          if (t) this.token = t;
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onStatus('live');
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const e = parseSseChunk(buf.slice(0, i));
            buf = buf.slice(i + 2);
            if (!e) continue;
            if (typeof e.seq === 'number') last = e.seq;
            onEvent(e);
          }
        }
      } catch {
        if (signal.aborted) return;
      }
      onStatus('retrying');
      await new Promise((r) => setTimeout(r, 1500));
    }
  }

  /** The console WebSocket of a VM: same origin, the token as a subprotocol. @param {string} id */
  console(id) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const protocols = [WS_PROTOCOL, ...(this.token ? [WS_TOKEN_PREFIX + this.token] : [])];
    const ws = new WebSocket(`${proto}//${location.host}/v1/vms/${encodeURIComponent(id)}/console`, protocols);
    ws.binaryType = 'arraybuffer';
    return ws;
  }
}

/** One SSE message → its JSON data, or null for comments and heartbeats. @param {string} chunk */
export function parseSseChunk(chunk) {
  const data = chunk.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
  if (!data) return null;
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

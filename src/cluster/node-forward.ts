// How the API role talks to nodes: plain requests (JSON), requests forwarded as they came
// (bodies and answers streamed both ways), and WebSocket upgrades (the console) piped as raw
// bytes once the node has switched protocols.
//
// HTTP goes through one undici Agent for the API process: a keep-alive pool of connections per
// node, kept for a minute between requests, so a forwarded create does not open a connection
// (and wait for the node's accept) every time. The console is not re-framed: the upgrade is
// sent on to the node with node:http, and after its 101 the two sockets are piped. Frames,
// pings and close codes pass untouched, the node's refusals (404, 409 before the upgrade) reach
// the client as the node wrote them, and no second WebSocket implementation has to agree with
// the node's on anything (a `ws` server + client pair would re-encode every frame and map close
// codes by hand).
import http from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Agent, request, type Dispatcher } from 'undici';
import { KilnError } from '../errors.ts';
import type { NodeRecord } from '../store/store.ts';

/** Headers that describe one hop, not the message. */
const HOP = new Set(['host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'proxy-connection', 'te', 'trailer']);

/** Told of every request sent to a node: its status, or 'unavailable' (the API role's metrics). */
export type ForwardObserver = (node: string, method: string, status: number | 'unavailable', ms: number) => void;

export class NodeForwarder {
  private readonly agent: Dispatcher;

  constructor(private readonly token: string, private readonly observe: ForwardObserver = () => {}) {
    this.agent = new Agent({ keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000, connect: { timeout: 5_000 } });
  }

  /** A request of the API role's own (not a client's), answered as parsed JSON with its status. */
  async json<T>(node: NodeRecord, method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: T; headers: Record<string, string | string[] | undefined> }> {
    let res;
    const t0 = performance.now();
    try {
      res = await request(new URL(path, node.url), {
        dispatcher: this.agent,
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        headersTimeout: 0,
        bodyTimeout: 0,
      });
    } catch (e) {
      this.observe(node.name, method, 'unavailable', performance.now() - t0);
      throw unavailable(node, e);
    }
    this.observe(node.name, method, res.statusCode, performance.now() - t0);
    const text = await res.body.text();
    return { status: res.statusCode, body: (text ? JSON.parse(text) : null) as T, headers: res.headers };
  }

  /** Sends the client's request on to `node` and streams the answer back (status, headers, body). */
  async forward(
    req: FastifyRequest,
    reply: FastifyReply,
    node: NodeRecord,
    /** Bytes as they came, or a stream (an image upload, never held whole in memory). */
    body: Buffer | string | NodeJS.ReadableStream | undefined,
    extraHeaders: Record<string, string> = {},
    /** A Server-Timing value from the time until the node's answer came (headers). */
    timing?: (upstreamMs: number) => string,
  ): Promise<FastifyReply> {
    const { res, t0 } = await this.send(req, reply, node, body, extraHeaders);
    return answer(reply, res, res.body, t0, timing);
  }

  /**
   * forward() for a create that may still go to another node: an error answer `refused` picks
   * by its status and code (a node's admission refusing before it made anything) is not relayed
   * but returned, for the caller to place the create again; any other answer is relayed.
   */
  async forwardUnlessRefused(
    req: FastifyRequest,
    reply: FastifyReply,
    node: NodeRecord,
    body: Buffer | undefined,
    refused: (status: number, code: string | undefined) => boolean,
    timing?: (upstreamMs: number) => string,
  ): Promise<{ refused: { status: number; code: string } } | { reply: FastifyReply }> {
    const { res, t0 } = await this.send(req, reply, node, body, {});
    if (res.statusCode < 400) return { reply: await answer(reply, res, res.body, t0, timing) };
    // An error answer is one small JSON object: read whole to look at its code.
    const text = await res.body.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { code?: string }).code;
    } catch { /* not kiln's JSON: relayed as it is */ }
    if (code && refused(res.statusCode, code)) return { refused: { status: res.statusCode, code } };
    return { reply: await answer(reply, res, text, t0, timing) };
  }

  /** The request sent on to `node` with the client's headers (minus hop-by-hop ones): its answer's head. */
  private async send(
    req: FastifyRequest,
    reply: FastifyReply,
    node: NodeRecord,
    body: Buffer | string | NodeJS.ReadableStream | undefined,
    extraHeaders: Record<string, string>,
  ): Promise<{ res: Dispatcher.ResponseData; t0: number }> {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP.has(k)) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    Object.assign(headers, extraHeaders);
    const ac = new AbortController();
    // A client that goes away (a followed log, an exec stream) ends the upstream request too.
    reply.raw.on('close', () => ac.abort());
    const t0 = performance.now();
    try {
      const res = await request(new URL(req.url, node.url), {
        dispatcher: this.agent,
        method: req.method as 'GET',
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' ? undefined : (body as Buffer | string | Readable | undefined),
        signal: ac.signal,
        // Creates with ?wait=1, execs and followed logs last as long as they last.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      this.observe(node.name, req.method, res.statusCode, performance.now() - t0);
      return { res, t0 };
    } catch (e) {
      this.observe(node.name, req.method, 'unavailable', performance.now() - t0);
      throw unavailable(node, e);
    }
  }

  /**
   * A WebSocket upgrade (already authorised, its owner found) sent on to `node`. After the
   * node's 101 the sockets are piped; any other answer is relayed as it came and the socket
   * closed. A node that cannot be reached gets `onUnavailable`'s answer.
   */
  upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer, node: NodeRecord, onUnavailable: (e: KilnError) => void): void {
    const headers: Record<string, string | string[]> = {};
    // Host is the node's; Origin was the API's to judge (the node would refuse the API's host as foreign).
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && k !== 'host' && k !== 'origin') headers[k] = v;
    pipeUpgrade(req, socket, head, new URL(req.url ?? '/', node.url), headers, (e) => onUnavailable(unavailable(node, e)));
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

/** The node's answer to the client: its status, headers (the API's Server-Timing entries after the node's own) and body. */
function answer(reply: FastifyReply, res: Dispatcher.ResponseData, body: Readable | string, t0: number, timing?: (upstreamMs: number) => string): FastifyReply {
  void reply.code(res.statusCode);
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && !HOP.has(k)) void reply.header(k, v);
  if (timing) void reply.header('server-timing', [res.headers['server-timing'], timing(performance.now() - t0)].flat().filter(Boolean).join(', '));
  return reply.send(body);
}

/**
 * Sends a WebSocket upgrade on to `target` with `headers`. After the upstream's 101 the sockets
 * are piped byte for byte; any other answer is relayed as it came and the socket closed. An
 * upstream that cannot be reached (no answer within 10 s) gets `onFail`.
 */
export function pipeUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer, target: URL, headers: http.OutgoingHttpHeaders, onFail: (e: Error) => void): void {
  const up = http.request({ host: bare(target.hostname), port: target.port, path: target.pathname + target.search, method: req.method, headers, timeout: 10_000, agent: false });
  up.once('timeout', () => up.destroy(new Error('no answer to the upgrade within 10 s')));
  up.once('error', onFail);
  socket.once('error', () => up.destroy());
  up.once('upgrade', (res, upstream, upHead) => {
    up.off('error', onFail);
    socket.write(`HTTP/1.1 101 ${res.statusMessage ?? 'Switching Protocols'}\r\n${rawHeaders(res.rawHeaders)}\r\n`);
    if (upHead.length) socket.write(upHead);
    if (head.length) upstream.write(head);
    upstream.setTimeout(0);
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
    upstream.pipe(socket).on('close', () => upstream.destroy());
    socket.pipe(upstream).on('close', () => socket.destroy());
    upstream.once('close', () => socket.destroy());
    socket.once('close', () => upstream.destroy());
  });
  up.once('response', (res) => {
    up.off('error', onFail);
    // A refusal before the upgrade (no such VM, not running): the upstream's answer as it is.
    socket.write(`HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}\r\n${rawHeaders(res.rawHeaders, true)}connection: close\r\n\r\n`);
    res.pipe(socket);
    res.once('error', () => socket.destroy());
  });
  up.end();
}

/**
 * Relays an HTTP request to `base` (another kiln listener) as it came: method, path, headers
 * (Host included: the E2B listener routes sandboxes by it), the body streamed (or `body`, when
 * it was read already); the answer's status, headers and body streamed back as they arrive
 * (Connect-RPC server streams, downloads). A client that goes away ends the upstream request.
 * `onFail` answers when the upstream could not be reached (nothing was written back yet).
 */
export function relay(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  base: string,
  agent: http.Agent,
  o: { body?: Buffer; onFail: (e: Error) => void; extraHeaders?: Record<string, string> },
): void {
  const target = new URL(base);
  const headers: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && (k === 'host' || k === 'content-length' || k === 'transfer-encoding' || !HOP.has(k))) headers[k] = v;
  if (o.body) {
    delete headers['transfer-encoding'];
    headers['content-length'] = String(o.body.length);
  }
  const up = http.request({ host: bare(target.hostname), port: target.port, method: req.method, path: req.url, headers, agent });
  // No idle limit while in use (a silent command stream); the agent's applies again once it is free.
  up.setTimeout(0);
  let answered = false;
  up.on('response', (pres) => {
    answered = true;
    const out: http.OutgoingHttpHeaders = { ...o.extraHeaders };
    for (const [k, v] of Object.entries(pres.headers)) if (v !== undefined && (k === 'content-length' || !HOP.has(k))) out[k] = v;
    res.writeHead(pres.statusCode ?? 502, out);
    // Each chunk is written as it comes (a server stream's messages do not wait), with back-pressure.
    pres.pipe(res);
    pres.on('error', () => res.destroy());
  });
  up.on('error', (e) => {
    if (!answered && !res.headersSent) return o.onFail(e);
    res.destroy();
  });
  res.on('close', () => {
    if (!res.writableFinished) up.destroy();
  });
  if (o.body) up.end(o.body);
  else req.pipe(up);
}

/** A URL's host name without IPv6 brackets (what node:http wants). */
function bare(hostname: string): string {
  return hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
}

function rawHeaders(raw: string[], dropHop = false): string {
  let out = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (dropHop && HOP.has(raw[i]!.toLowerCase())) continue;
    out += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  return out;
}

export function unavailable(node: NodeRecord, e: unknown): KilnError {
  const err = e as { code?: string; cause?: { code?: string } };
  const cause = err.code ?? err.cause?.code ?? null;
  return new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${node.name} (${node.url}) did not answer: ${(e as Error).message}`, { node: node.id, cause });
}

/** A connection the node never accepted: nothing was delivered, so the request may go elsewhere. */
export function notDelivered(e: unknown): boolean {
  const code = (e as { details?: { cause?: string } }).details?.cause;
  return code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'UND_ERR_CONNECT_TIMEOUT';
}

// kilnd's E2B listener: one HTTP/1.1 server for both of E2B's planes.
//  - A request addressed to a sandbox — Host `<port>-<sandboxID>.<domain>` (E2B_DOMAIN with
//    wildcard DNS), or the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers the SDK sends on every
//    envd call (E2B_SANDBOX_URL pointing here) — goes to the sandbox plane: envd (port 49983)
//    is served by kilnd itself (Connect-RPC + /files + /health, translated onto kiln's guest
//    agent); any other port is proxied to the sandbox's own address, WebSocket upgrades too.
//  - Everything else is the control plane (E2B's REST API, src/e2b/control-plane.ts).
import http from 'node:http';
import net from 'node:net';
import { createContextKey, createContextValues, type HandlerContext } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Daemon } from '../daemon.ts';
import { e2bApiKey, writeE2bApiKey } from './api-key.ts';
import { registerControlPlane } from './control-plane.ts';
import { E2bError } from './errors.ts';
import { resolveCaller } from './envd/caller.ts';
import { handleFiles, sendError, sendJson } from './envd/files-http.ts';
import { filesystemService, WatcherTable } from './envd/filesystem-service.ts';
import { processService, ProcessTable } from './envd/process-service.ts';
import { Filesystem } from './gen/filesystem/filesystem_pb.ts';
import { Process } from './gen/process/process_pb.ts';
import { SandboxService } from './sandbox-service.ts';

export const ENVD_PORT = 49983;

export interface E2bOptions {
  /** host:port to listen on. */
  host: string;
  port: number;
  /** The domain sandboxes are reached under (`<port>-<id>.<domain>`); null: the SDK's own. */
  domain: string | null;
}

export interface SandboxTarget {
  id: string;
  port: number;
}

/** The sandbox and port a request is for, or null for the control plane. */
export function sandboxTarget(headers: http.IncomingHttpHeaders): SandboxTarget | null {
  const host = String(headers.host ?? '').toLowerCase().replace(/:\d+$/, '');
  const m = /^(\d{1,5})-([a-z0-9]+)\./.exec(host);
  if (m) return { id: m[2]!, port: Number(m[1]) };
  const id = headers['e2b-sandbox-id'];
  const port = Number(headers['e2b-sandbox-port']);
  if (typeof id === 'string' && id && Number.isInteger(port) && port > 0 && port < 65536) return { id, port };
  return null;
}

const kSandbox = createContextKey<string>('', { description: 'the sandbox an envd call is for' });
const SANDBOX_OF = Symbol('kiln.e2b.sandbox');
type RoutedRequest = http.IncomingMessage & { [SANDBOX_OF]?: string };

export class E2bServer {
  readonly sandboxes: SandboxService;
  readonly apiKey: string | null;
  private readonly processes = new Map<string, ProcessTable>();
  private readonly watchers = new Map<string, WatcherTable>();
  private app: FastifyInstance | null = null;
  private server: http.Server | null = null;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly daemon: Daemon,
    readonly opts: E2bOptions,
  ) {
    this.sandboxes = new SandboxService(daemon, { domain: opts.domain });
    this.apiKey = daemon.config.apiToken ? e2bApiKey(daemon.config.apiToken) : null;
    const drop = (id: string) => {
      this.processes.get(id)?.closeAll();
      this.processes.delete(id);
      this.watchers.get(id)?.closeAll();
      this.watchers.delete(id);
    };
    this.sandboxes.onGone(drop);
  }

  private table(ctx: HandlerContext): ProcessTable {
    const id = ctx.values.get(kSandbox);
    let t = this.processes.get(id);
    if (!t) this.processes.set(id, (t = new ProcessTable()));
    return t;
  }

  private watcherTable(ctx: HandlerContext): WatcherTable {
    const id = ctx.values.get(kSandbox);
    let t = this.watchers.get(id);
    if (!t) this.watchers.set(id, (t = new WatcherTable()));
    return t;
  }

  /** Starts serving; returns the URL (E2B_API_URL and E2B_SANDBOX_URL both point here). */
  async listen(): Promise<string> {
    await this.sandboxes.start();
    if (this.apiKey) await writeE2bApiKey(this.daemon.config.stateDir, this.apiKey);
    const callerFor = (ctx: HandlerContext) =>
      resolveCaller(this.sandboxes, ctx.values.get(kSandbox), { token: ctx.requestHeader.get('x-access-token'), authorization: ctx.requestHeader.get('authorization') });
    const envd = connectNodeAdapter({
      routes: (router) => {
        router.service(Process, processService((ctx) => this.table(ctx), callerFor));
        router.service(Filesystem, filesystemService((ctx) => this.watcherTable(ctx), callerFor));
      },
      contextValues: (req) => createContextValues().set(kSandbox, (req as RoutedRequest)[SANDBOX_OF] ?? ''),
      fallback: (req, res) => void this.envdRest(req as RoutedRequest, res as http.ServerResponse),
    });
    const app = Fastify({
      loggerInstance: this.daemon.log.child({ component: 'e2b' }) as FastifyBaseLogger,
      bodyLimit: 1024 * 1024,
      serverFactory: (handler) =>
        http.createServer((req, res) => {
          const t = sandboxTarget(req.headers);
          if (!t) return handler(req, res);
          if (t.port === ENVD_PORT) {
            (req as RoutedRequest)[SANDBOX_OF] = t.id;
            return envd(req, res);
          }
          void this.proxy(req, res, t);
        }),
    });
    registerControlPlane(app, this.sandboxes, this.apiKey);
    await app.ready();
    this.app = app;
    this.server = app.server;
    // Long command streams and uploads: no whole-request deadline (each stream has its own).
    this.server.requestTimeout = 0;
    this.server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    this.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void this.proxyUpgrade(req, socket, head));
    await app.listen({ host: this.opts.host, port: this.opts.port });
    const addr = this.server.address() as net.AddressInfo;
    return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  }

  /** envd's REST routes (the Connect adapter's fallback). */
  private async envdRest(req: RoutedRequest, res: http.ServerResponse): Promise<void> {
    const id = req[SANDBOX_OF] ?? '';
    const url = new URL(req.url ?? '/', 'http://envd');
    try {
      if (url.pathname === '/health') {
        // 502 for a sandbox that is gone or paused: the SDK's health probe reads it so.
        const s = this.sandboxes.store.get(id);
        if (!s || s.state !== 'running') throw new E2bError(502, `The sandbox ${id} was not found`);
        res.writeHead(204).end();
        return;
      }
      const caller = () =>
        resolveCaller(this.sandboxes, id, {
          token: headerOf(req, 'x-access-token'),
          authorization: headerOf(req, 'authorization'),
          user: url.searchParams.get('username'),
        });
      if (url.pathname === '/files') return await handleFiles(req, res, url, caller);
      if (url.pathname === '/envs' && req.method === 'GET') return sendJson(res, 200, (await caller()).sandbox.envVars);
      throw new E2bError(404, `no route ${req.method} ${url.pathname}`);
    } catch (e) {
      sendError(res, e);
    }
  }

  /** The sandbox's own address for `port`: 502 (E2B's proxy answer) when it has none. */
  private async upstream(t: SandboxTarget): Promise<{ host: string; port: number }> {
    const s = this.sandboxes.store.get(t.id);
    if (!s) throw new E2bError(502, `The sandbox ${t.id} was not found`);
    if (s.state !== 'running') throw new E2bError(502, `The sandbox ${t.id} is paused`);
    const vm = await this.daemon.vms.get(s.vmId);
    if (!vm.ip) throw new E2bError(502, `The sandbox ${t.id} has no address`);
    return { host: vm.ip, port: t.port };
  }

  private async proxy(req: http.IncomingMessage, res: http.ServerResponse, t: SandboxTarget): Promise<void> {
    try {
      const up = await this.upstream(t);
      const preq = http.request({ host: up.host, port: up.port, method: req.method, path: req.url, headers: req.headers, timeout: 30_000 }, (pres) => {
        res.writeHead(pres.statusCode ?? 502, pres.rawHeaders as unknown as http.OutgoingHttpHeaders);
        pres.pipe(res);
      });
      preq.on('timeout', () => preq.destroy(new Error('the sandbox did not answer within 30 s')));
      preq.on('error', (e) => {
        if (res.headersSent) return res.destroy();
        sendJson(res, 502, { sandboxId: t.id, port: t.port, code: 502, message: `The sandbox is running but port ${t.port} is not answering: ${e.message}` });
      });
      req.pipe(preq);
    } catch (e) {
      sendError(res, e);
    }
  }

  private async proxyUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const t = sandboxTarget(req.headers);
    if (!t || t.port === ENVD_PORT) {
      socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    let up: { host: string; port: number };
    try {
      up = await this.upstream(t);
    } catch (e) {
      const msg = JSON.stringify({ code: 502, message: (e as Error).message });
      socket.end(`HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(msg)}\r\n\r\n${msg}`);
      return;
    }
    const upstream = net.connect(up.port, up.host, () => {
      let headText = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${headText}\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.setTimeout(30_000, () => {
      if (!upstream.readyState || upstream.connecting) upstream.destroy();
    });
    upstream.on('connect', () => upstream.setTimeout(0));
    upstream.on('error', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
  }

  async close(): Promise<void> {
    for (const t of this.processes.values()) t.closeAll();
    for (const t of this.watchers.values()) t.closeAll();
    for (const s of this.sockets) s.destroy();
    await this.app?.close();
    this.sandboxes.close();
  }
}

function headerOf(req: http.IncomingMessage, name: string): string | null {
  const v = req.headers[name];
  return typeof v === 'string' ? v : null;
}

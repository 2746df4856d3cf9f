// E2B's API through the cluster's API role (`kiln serve --role api --e2b-listen host:port`): one
// address for the `e2b` SDK (E2B_API_URL and E2B_SANDBOX_URL), in front of every node's own E2B
// listener (src/e2b/server.ts), which each node advertises in its row (nodes.e2b_url).
//
//  - Sandbox plane (Host `<port>-<id>.<domain>` or the E2b-Sandbox-Id/-Port headers, the same
//    rule as the node's, sandboxTarget): envd calls (Connect-RPC, server streams included,
//    /files) and a sandbox's other ports are relayed byte for byte to the node that runs the
//    sandbox, Host and headers kept (the node routes by them), WebSocket upgrades piped.
//  - Control plane: creates are placed on a node (placement.ts: best of K by free capacity,
//    preferring nodes that run sandboxes of the same template: its snapshot files and warm clone
//    pool are there; `x-kiln-node: NAME` pins one) and relayed to it; lists (v1 and v2, filters and paging) are every ready
//    node's, merged; everything about one sandbox goes to its owner.
//
// A sandbox is a VM labelled `e2b.sandbox=<id>` and named by the id, so its owner is read from
// the VM's row in the store; nothing about sandboxes is kept here. The E2B API key is the one
// every node derives from the cluster's shared API token (src/e2b/api-key.ts), checked here and
// again by the node. A sandbox whose node is lost answers as E2B does for a sandbox that is not
// there: 404 on the control plane (the SDK's NotFoundError, `kill()` false), 502 on the sandbox
// plane (E2B's proxy answer; the SDK reads it as "not running").
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { KilnError } from '../errors.ts';
import { apiKeyMatches, e2bApiKey } from '../e2b/api-key.ts';
import { pageToken } from '../e2b/control-plane.ts';
import { E2bError, e2bErrorBody } from '../e2b/errors.ts';
import { SANDBOX_MEMORY_MIB, SANDBOX_VCPUS } from '../e2b/sandbox-service.ts';
import { ENVD_PORT, sandboxTarget, type SandboxTarget } from '../e2b/server.ts';
import type { NodeRecord, Store } from '../store/store.ts';
import { COMMITTING_STATES } from '../vm/admission.ts';
import { notDelivered, pipeUpgrade, relay, unavailable } from './node-forward.ts';
import { place } from './placement.ts';

export interface ClusterE2bOptions {
  /** The shared (unscoped) store. */
  store: Store;
  /** The cluster's API token: the E2B API key is derived from it, as on every node. */
  token: string;
  host: string;
  port: number;
  log: Logger;
  /** Candidates compared per placement (default 2). */
  k?: number;
  random?: () => number;
}

/** The node's own limit on a control-plane body (src/e2b/server.ts). */
const BODY_LIMIT = 1024 * 1024;
/** A node's answer to one list request (the API role's own request). */
const LIST_TIMEOUT_MS = 30_000;

const SANDBOX_ROUTE = /^\/(?:v2\/)?sandboxes\/([^/]+)(?:\/|$)/;

interface Listed {
  sandboxID: string;
  startedAt: string;
}

type Owner = { node: NodeRecord & { e2bUrl: string } } | { gone: string };

export class ClusterE2b {
  readonly key: string;
  // Kept-alive connections to the nodes' listeners; an idle one is closed after 4 s, before a
  // node's server would (Node's 5 s), so a request is never sent on a connection being closed.
  private readonly agent = new http.Agent({ keepAlive: true, timeout: 4_000 });
  private readonly sockets = new Set<net.Socket>();
  private server: http.Server | null = null;

  constructor(private readonly o: ClusterE2bOptions) {
    this.key = e2bApiKey(o.token);
  }

  /** Starts listening; the URL (E2B_API_URL and E2B_SANDBOX_URL both point here). */
  async listen(): Promise<string> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    // Command streams and uploads last as long as they last (the nodes bound each stream).
    server.requestTimeout = 0;
    server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void this.upgrade(req, socket, head));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.port, this.o.host, () => resolve());
    });
    this.server = server;
    const addr = server.address() as net.AddressInfo;
    return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    if (this.server) await new Promise<void>((r) => this.server!.close(() => r()));
    this.agent.destroy();
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const t = sandboxTarget(req.headers);
      if (t) return await this.sandboxPlane(req, res, t);
      await this.controlPlane(req, res);
    } catch (e) {
      if (!(e instanceof E2bError) && !(e instanceof KilnError)) this.o.log.error({ err: e }, 'e2b request failed');
      sendE2b(res, e);
    }
  }

  /**
   * The node that runs sandbox `id`, or why there is none to ask: no such sandbox (the node would
   * say the same), or its node is lost (its sandboxes are never resumed: a rejoined node records
   * their VMs stopped and drops them).
   */
  async owner(id: string): Promise<Owner> {
    const vm = await this.o.store.getVm(id);
    if (!vm || vm.labels?.['e2b.sandbox'] !== id) return { gone: `sandbox "${id}" doesn't exist or you don't have access to it` };
    const node = vm.nodeId ? await this.o.store.getNode(vm.nodeId) : null;
    const where = `sandbox "${id}" was on node ${node?.name ?? vm.nodeId ?? '(none)'}`;
    if (vm.state === 'lost' || !node || node.state !== 'ready') return { gone: `${where}, which is ${node?.state ?? 'not registered'}: the sandbox is gone` };
    if (!node.e2bUrl) return { gone: `${where}, which does not serve E2B's API any more (no --e2b-listen)` };
    return { node: node as NodeRecord & { e2bUrl: string } };
  }

  private async sandboxPlane(req: http.IncomingMessage, res: http.ServerResponse, t: SandboxTarget): Promise<void> {
    const o = await this.owner(t.id);
    if ('gone' in o) return sendJson(res, 502, { sandboxId: t.id, port: t.port, code: 502, message: o.gone });
    relay(req, res, o.node.e2bUrl, this.agent, {
      onFail: (e) => sendJson(res, 502, { sandboxId: t.id, port: t.port, code: 502, message: unavailable(o.node, e).message }),
    });
  }

  private async controlPlane(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://e2b');
    const path = url.pathname;
    if (path === '/health' && req.method === 'GET') return sendJson(res, 200, { message: 'Health check successful' });
    const given = req.headers['x-api-key'];
    if (!apiKeyMatches(typeof given === 'string' ? given : undefined, this.key)) {
      throw new E2bError(401, given === undefined ? 'missing X-API-KEY header' : 'Invalid API key, please check your credentials');
    }
    if ((path === '/sandboxes' || path === '/v2/sandboxes') && req.method === 'POST') return this.create(req, res);
    if ((path === '/sandboxes' || path === '/v2/sandboxes') && req.method === 'GET') return this.list(req, res, url, path === '/v2/sandboxes');
    const m = SANDBOX_ROUTE.exec(path);
    if (m) {
      const o = await this.owner(decodeURIComponent(m[1]!));
      if ('gone' in o) throw new E2bError(404, o.gone);
      return relay(req, res, o.node.e2bUrl, this.agent, { extraHeaders: { 'x-kiln-node': o.node.name }, onFail: (e) => sendE2b(res, unavailable(o.node, e)) });
    }
    throw new E2bError(404, `no route ${req.method} ${path}`);
  }

  /** Placed like a VM create (one sandbox's size), relayed to the node; refused connections go elsewhere. */
  private async create(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const body = await readBody(req, BODY_LIMIT);
    let templateID: unknown;
    try {
      templateID = body.length ? (JSON.parse(body.toString('utf8')) as { templateID?: unknown } | null)?.templateID : undefined;
    } catch (e) {
      throw new E2bError(400, `body is not JSON: ${(e as Error).message}`);
    }
    let candidates = await this.candidates(typeof templateID === 'string' ? templateID : null);
    // `x-kiln-node: NAME` pins the create to one node (as for function invokes): operators, tests.
    const pin = req.headers['x-kiln-node'];
    if (typeof pin === 'string' && pin) {
      candidates = candidates.filter((c) => c.node.name === pin);
      if (!candidates.length) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `x-kiln-node: no ready node named ${JSON.stringify(pin)} serves E2B's API`, { node: pin });
    }
    const local = new Set(candidates.filter((c) => c.local).map((c) => c.node.id));
    let nodes = candidates.map((c) => c.node);
    for (;;) {
      const node = place(nodes, { vcpus: SANDBOX_VCPUS, memoryMib: SANDBOX_MEMORY_MIB, local }, { k: this.o.k, ...(this.o.random ? { random: this.o.random } : {}) });
      if (!node) {
        throw new KilnError('KILN_ERR_CAPACITY', `no ready node with an E2B listener has ${SANDBOX_VCPUS} vCPU and ${SANDBOX_MEMORY_MIB} MiB free (${candidates.length} serve E2B)`);
      }
      const delivered = await new Promise<Error | null>((resolve) => {
        relay(req, res, node.e2bUrl!, this.agent, {
          body, extraHeaders: { 'x-kiln-node': node.name },
          onFail: (e) => resolve(e),
        });
        res.once('finish', () => resolve(null));
        res.once('close', () => resolve(null));
      });
      if (!delivered) return;
      // Never accepted (refused, unreachable): nothing was created there; try the others.
      if (!notDelivered(unavailable(node, delivered))) return sendE2b(res, unavailable(node, delivered));
      this.o.log.warn({ node: node.name, err: delivered.message }, 'e2b create: node refused the connection; placing elsewhere');
      nodes = nodes.filter((n) => n.id !== node.id);
      candidates = candidates.filter((c) => c.node.id !== node.id);
    }
  }

  /**
   * Ready nodes that serve E2B, with what they have committed as the store says now (or as their
   * last heartbeat said, whichever is more: a sandbox placed a moment ago counts before the
   * node's next heartbeat), and whether each runs a sandbox of `templateID` now.
   */
  async candidates(templateID: string | null): Promise<{ node: NodeRecord; local: boolean }[]> {
    const [vms, nodes] = await Promise.all([this.o.store.listVms(), this.o.store.listNodes()]);
    const committed = new Map<string, { vcpus: number; memoryMib: number }>();
    const local = new Set<string>();
    for (const vm of vms) {
      if (!vm.nodeId) continue;
      if (templateID !== null && vm.labels?.['e2b.template'] === templateID) local.add(vm.nodeId);
      if (!COMMITTING_STATES.includes(vm.state)) continue;
      const c = committed.get(vm.nodeId) ?? { vcpus: 0, memoryMib: 0 };
      c.vcpus += vm.vcpus;
      c.memoryMib += vm.memoryMib;
      committed.set(vm.nodeId, c);
    }
    return nodes
      .filter((n) => n.state === 'ready' && n.e2bUrl)
      .map((n) => {
        const c = committed.get(n.id);
        const capacity = c
          ? { ...n.capacity, committedVcpus: Math.max(n.capacity.committedVcpus, c.vcpus), committedMemoryMib: Math.max(n.capacity.committedMemoryMib, c.memoryMib) }
          : n.capacity;
        return { node: { ...n, capacity }, local: local.has(n.id) };
      });
  }

  /**
   * Every ready node's list, merged. v2 pages by (startedAt, id) across nodes: each node is asked
   * for its first `limit` after the cursor, so the first `limit` of the merge are the cluster's;
   * there is a next page when the merge has more, or a node said it has.
   */
  private async list(req: http.IncomingMessage, res: http.ServerResponse, url: URL, paged: boolean): Promise<void> {
    const nodes = (await this.o.store.listNodes()).filter((n) => n.state === 'ready' && n.e2bUrl);
    const answers = await Promise.all(
      nodes.map(async (n) => {
        let r: Response;
        try {
          r = await fetch(new URL(url.pathname + url.search, n.e2bUrl!), {
            headers: { 'x-api-key': String(req.headers['x-api-key']) },
            signal: AbortSignal.timeout(LIST_TIMEOUT_MS),
          });
        } catch (e) {
          throw unavailable(n, e);
        }
        const text = await r.text();
        return { node: n, status: r.status, body: text, next: r.headers.get('x-next-token') };
      }),
    );
    // A refusal (a bad filter, a bad token) is every node's: the first as it came.
    const refused = answers.find((a) => a.status !== 200);
    if (refused) {
      res.writeHead(refused.status, { 'content-type': 'application/json' });
      res.end(refused.body);
      return;
    }
    const desc = paged && url.searchParams.get('order') === 'desc';
    const key = (s: Listed) => [Date.parse(s.startedAt), s.sandboxID] as const;
    const all = answers.flatMap((a) => JSON.parse(a.body) as Listed[]).sort((x, y) => {
      const [ax, ix] = key(x);
      const [ay, iy] = key(y);
      const c = ax - ay || ix.localeCompare(iy);
      return desc ? -c : c;
    });
    if (!paged) return sendJson(res, 200, all);
    const limit = url.searchParams.has('limit') ? Number(url.searchParams.get('limit')) : 100;
    const page = all.slice(0, limit);
    const last = page[page.length - 1];
    const more = all.length > limit || answers.some((a) => a.next);
    if (more && last) res.setHeader('x-next-token', pageToken({ startedAt: Date.parse(last.startedAt), id: last.sandboxID }));
    sendJson(res, 200, page);
  }

  /** A WebSocket to a sandbox's port: piped to the owner node's listener, Host kept. */
  private async upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const refuse = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
    };
    const t = sandboxTarget(req.headers);
    if (!t || t.port === ENVD_PORT) return refuse(404, { code: 404, message: 'WebSocket upgrades are served for sandbox ports only' });
    let o: Owner;
    try {
      o = await this.owner(t.id);
    } catch (e) {
      return refuse(502, { sandboxId: t.id, port: t.port, code: 502, message: (e as Error).message });
    }
    if ('gone' in o) return refuse(502, { sandboxId: t.id, port: t.port, code: 502, message: o.gone });
    const node = o.node;
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = v;
    pipeUpgrade(req, socket, head, new URL(req.url ?? '/', node.e2bUrl), headers, (e) =>
      refuse(502, { sandboxId: t.id, port: t.port, code: 502, message: unavailable(node, e).message }));
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** E2B's error shape ({code, message}, code = the status); kiln's errors keep their code in the message. */
function sendE2b(res: http.ServerResponse, e: unknown): void {
  const body = e2bErrorBody(e);
  sendJson(res, body.code, body);
}

async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) throw new E2bError(413, `request body larger than ${limit} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

// `kiln serve --role api`: the cluster's front door. Stateless (everything it knows is in the
// shared store), so more than one may run. It places each VM create on a node (best of K by
// free capacity, image locality: placement.ts) and forwards it there; requests about one VM
// (exec, files, logs, the console WebSocket, …) go to the node that runs it; the VM list is
// every ready node's. Events and images are read from the store (cluster-wide tables);
// functions are deployed through one node and invoked where they are warm (api-functions.ts);
// published TCP ports of VMs are listened on here and piped to their node (port-proxy.ts);
// containers (api-containers.ts), volumes, snapshots, templates and image files
// (api-storage.ts) go to the node that holds them, creates placed by what they use
// (api-placement.ts); /metrics is this process's own (api-metrics.ts). It runs no VMM and
// needs no host setup. What it does not forward yet answers KILN_ERR_NOT_ROUTED, naming where
// to go instead.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { errorBody, toKilnError } from '../api/server.ts';
import { registerEventStream } from '../api/routes/events.ts';
import { imageView } from '../api/views.ts';
import { tokenMatches } from '../api/auth/token-file.ts';
import { KilnError, isKilnError } from '../errors.ts';
import { WS_TOKEN_PREFIX } from '../sdk/api-token.ts';
import type { NodeRecord, Store, VmRecord } from '../store/store.ts';
import { COMMITTING_STATES } from '../vm/admission.ts';
import { registerClusterContainerRoutes } from './api-containers.ts';
import { ClusterE2b } from './api-e2b.ts';
import { registerClusterFunctionRoutes } from './api-functions.ts';
import { ApiMetrics, registerApiMetricsRoute } from './api-metrics.ts';
import { forwardCreate, type ClusterRouteContext } from './api-placement.ts';
import { registerClusterStorageRoutes } from './api-storage.ts';
import { ImageIds } from './image-ids.ts';
import { PortProxy } from './port-proxy.ts';
import { NodeForwarder } from './node-forward.ts';
import { NodeLedger } from './node-ledger.ts';
import { StoreEventFollower } from './store-events.ts';

export interface ApiRoleOptions {
  /** The shared (unscoped) store. */
  store: Store;
  token: string;
  listenHost: string;
  listenPort: number;
  log: Logger;
  /** Candidates compared per placement (default 2). */
  k?: number;
  /** Largest request body forwarded (file uploads go through here). */
  bodyLimit?: number;
  /** How often the published ports proxied here are read from the store (default 1 s). */
  portSyncMs?: number;
  /** `--e2b-listen`: also serve E2B's API here, in front of the nodes' (api-e2b.ts). */
  e2b?: { host: string; port: number };
}

const DEFAULT_MEMORY_MIB = 256;

/** Node routes the API role does not forward yet, and where to reach them instead. */
const NOT_ROUTED: [RegExp, string][] = [
  [/^\/(v2\/)?sandboxes(\/|$)/, 'the E2B-compatible API is served on the API role\'s own E2B listener (--e2b-listen), not on this port'],
  [/^\/(openapi\.json|ui)(\/|$)/, 'the OpenAPI document and the dashboard are served by each node'],
];

export class ApiRole {
  private constructor(
    private readonly app: FastifyInstance,
    private readonly fwd: NodeForwarder,
    private readonly events: StoreEventFollower,
    private readonly ports: PortProxy,
    readonly url: string,
    private readonly e2b: ClusterE2b | null,
    /** The E2B listener's URL (E2B_API_URL, E2B_SANDBOX_URL); null without --e2b-listen. */
    readonly e2bUrl: string | null,
  ) {}

  static async start(o: ApiRoleOptions): Promise<ApiRole> {
    const app: FastifyInstance = Fastify({
      loggerInstance: o.log as FastifyBaseLogger,
      bodyLimit: o.bodyLimit ?? 1024 ** 3,
      // The node's validation rules for the routes served here (events): unknown fields are errors.
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: true } },
    });
    const metrics = new ApiMetrics(o.store);
    const fwd = new NodeForwarder(o.token, (...a) => metrics.forward(...a));
    // Creates are placed on an in-memory view of the nodes (node-ledger.ts), kept fresh in the
    // background, and images resolved from a short cache (image-ids.ts): no store read on the
    // way of a plain create.
    const ledger = new NodeLedger(o.store, COMMITTING_STATES).start();
    app.addHook('onClose', async () => ledger.close());
    const ctx: ClusterRouteContext = { store: o.store, fwd, metrics, k: o.k, ledger, images: new ImageIds(o.store) };
    const events = new StoreEventFollower(o.store, o.log);
    const ports = new PortProxy({ store: o.store, listenHost: o.listenHost, syncMs: o.portSyncMs ?? 1000, log: o.log });
    app.removeAllContentTypeParsers();
    // Bodies are forwarded as they came: kept as bytes, parsed only where placement needs them.
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    app.setErrorHandler((err, req, reply) => {
      const ke = toKilnError(err as Error);
      if (ke.status >= 500) req.log.error({ err }, 'request failed');
      void reply.status(ke.status).send(errorBody(ke));
    });
    app.setNotFoundHandler((req, reply) => {
      const path = req.url.split('?')[0]!;
      const routed = NOT_ROUTED.find(([re]) => re.test(path));
      const ke = routed
        ? new KilnError('KILN_ERR_NOT_ROUTED', `${req.method} ${path}: ${routed[1]}`, { path })
        : new KilnError('KILN_ERR_NOT_FOUND', `no route ${req.method} ${path}`);
      void reply.status(ke.status).send(errorBody(ke));
    });
    app.addHook('onRequest', async (req) => {
      if (req.url.split('?')[0] === '/healthz') return;
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      if (!m || !tokenMatches(m[1]!, o.token)) throw new KilnError('KILN_ERR_UNAUTHORIZED', 'missing or wrong API token');
    });

    app.get('/healthz', async () => {
      const nodes = await o.store.listNodes();
      return {
        status: 'ok', role: 'api',
        nodes: { ready: nodes.filter((n) => n.state === 'ready').length, lost: nodes.filter((n) => n.state === 'lost').length },
        // Published TCP ports of VMs on ready nodes, proxied by this API process.
        ports: ports.report(),
      };
    });

    app.get('/v1/nodes', async () => (await o.store.listNodes()).map(nodeView));

    // Placed like every create (api-placement.ts): its snapshot's or volumes' node, a node with
    // its template, else best of K by free capacity with image locality.
    app.post('/v1/vms', (req, reply) => forwardCreate(ctx, req, reply, 'vm', { vcpus: 1, memoryMib: DEFAULT_MEMORY_MIB }));

    app.get('/v1/vms', async () => {
      const nodes = (await o.store.listNodes()).filter((n) => n.state === 'ready');
      const lists = await Promise.all(
        nodes.map(async (n) => {
          const r = await fwd.json<{ vms: { created_at?: string }[] }>(n, 'GET', '/v1/vms');
          if (r.status !== 200) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${n.name} answered ${r.status} to GET /v1/vms`, { node: n.id });
          return r.body.vms.map((vm) => ({ ...vm, node: n.name }));
        }),
      );
      // The node's own list shape ({ vms }), each VM tagged with its node.
      return { vms: lists.flat().sort((a, b) => String(a.created_at ?? '').localeCompare(String(b.created_at ?? ''))) };
    });

    const ownerOf = async (id: string): Promise<{ vm: VmRecord; node: NodeRecord }> => {
      const vm = await o.store.getVm(id);
      if (!vm) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${JSON.stringify(id)}`);
      const node = vm.nodeId ? await o.store.getNode(vm.nodeId) : null;
      if (!node || node.state !== 'ready') {
        throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `VM ${vm.id} is on node ${node?.name ?? vm.nodeId ?? '(none)'}, which is ${node?.state ?? 'not registered'}`, { vm: vm.id, node: vm.nodeId ?? null });
      }
      return { vm, node };
    };
    const toOwner = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
      const { node } = await ownerOf(req.params.id);
      void reply.header('x-kiln-node', node.name);
      return fwd.forward(req, reply, node, req.body as Buffer | undefined);
    };
    app.all('/v1/vms/:id', toOwner);
    app.all('/v1/vms/:id/*', toOwner);

    // The console: a WebSocket upgrade never reaches Fastify's routes; it is authorised here,
    // its VM's owner looked up, and the upgrade piped to that node (node-forward.ts).
    app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const refuse = (e: KilnError) => {
        const body = JSON.stringify(errorBody(e));
        socket.end(`HTTP/1.1 ${e.status} ${e.code}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      };
      socket.on('error', () => socket.destroy());
      const m = /^\/v1\/vms\/([^/?]+)\/console(\?|$)/.exec(req.url ?? '');
      if (!m) return refuse(new KilnError('KILN_ERR_NOT_FOUND', `no WebSocket route ${(req.url ?? '').split('?')[0]} on the API role (it serves /v1/vms/{id}/console)`));
      const given = upgradeToken(req);
      if (given === null || !tokenMatches(given, o.token)) return refuse(new KilnError('KILN_ERR_UNAUTHORIZED', 'missing or wrong API token'));
      ownerOf(decodeURIComponent(m[1]!)).then(
        ({ node }) => fwd.upgrade(req, socket, head, node, refuse),
        (e) => refuse(isKilnError(e) ? e : new KilnError('KILN_ERR_INTERNAL', (e as Error).message)),
      );
    });

    // Events: every node appends to the one table; the node's own route, over the store.
    registerEventStream(app, {
      store: o.store,
      subscribe: (fn) => events.subscribe(fn),
      vmId: async (id) => {
        const vm = await o.store.getVm(id);
        if (!vm) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${JSON.stringify(id)}`);
        return vm.id;
      },
    });

    // Images: the catalogue is cluster-wide (the store); a pull goes to the node with the most
    // free disk, whose files other nodes on the same disk reuse (docs/cluster.md, known limits).
    app.get('/v1/images', async () => ({ images: (await o.store.listImages()).map(imageView) }));
    app.get<{ Params: { id: string } }>('/v1/images/:id', async (req) => {
      const img = await o.store.getImage(req.params.id);
      if (!img) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${JSON.stringify(req.params.id)}`);
      return imageView(img);
    });
    app.post('/v1/images', async (req, reply) => {
      const nodes = (await o.store.listNodes()).filter((n) => n.state === 'ready').sort((a, b) => b.capacity.diskFreeBytes - a.capacity.diskFreeBytes);
      if (!nodes[0]) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node to pull the image on');
      void reply.header('x-kiln-node', nodes[0].name);
      return fwd.forward(req, reply, nodes[0], req.body as Buffer | undefined);
    });
    registerClusterFunctionRoutes(app, { store: o.store, fwd });
    registerClusterContainerRoutes(app, ctx);
    registerClusterStorageRoutes(app, ctx);
    registerApiMetricsRoute(app, metrics);

    await app.listen({ host: o.listenHost, port: o.listenPort });
    await ports.start();
    const addr = app.server.address();
    const url = typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : String(addr);
    const e2b = o.e2b ? new ClusterE2b({ store: o.store, token: o.token, host: o.e2b.host, port: o.e2b.port, log: o.log.child({ component: 'e2b' }), ...(o.k ? { k: o.k } : {}) }) : null;
    const e2bUrl = e2b ? await e2b.listen().catch(async (e) => {
      // Nothing half-made: an E2B listener that cannot start takes the API listener down with it.
      events.close();
      await ports.close();
      await app.close();
      await fwd.close();
      throw e;
    }) : null;
    return new ApiRole(app, fwd, events, ports, url, e2b, e2bUrl);
  }

  async close(): Promise<void> {
    await this.e2b?.close();
    this.events.close();
    await this.ports.close();
    await this.app.close();
    await this.fwd.close();
  }
}

/** The token of a WebSocket upgrade: the Authorization header, or (browsers) a subprotocol. */
function upgradeToken(req: IncomingMessage): string | null {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  if (m) return m[1]!;
  const protos = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
  const p = protos.find((x) => x.startsWith(WS_TOKEN_PREFIX));
  return p ? p.slice(WS_TOKEN_PREFIX.length) : null;
}

export function nodeView(n: NodeRecord) {
  return {
    id: n.id, name: n.name, url: n.url, e2b_url: n.e2bUrl, state: n.state, incarnation: n.incarnation,
    capacity: {
      vcpus: n.capacity.vcpus, memory_mib: n.capacity.memoryMib, committed_vcpus: n.capacity.committedVcpus,
      committed_memory_mib: n.capacity.committedMemoryMib, vms: n.capacity.vms, disk_free_bytes: n.capacity.diskFreeBytes,
      images: n.capacity.images, warm: n.capacity.warm, functions: n.capacity.functions ?? {},
    },
    registered_at: new Date(n.registeredAt).toISOString(),
    heartbeat_at: new Date(n.heartbeatAt).toISOString(),
    lost_at: n.lostAt === null ? null : new Date(n.lostAt).toISOString(),
  };
}

// `kiln serve --role api`: the cluster's front door. Stateless (everything it knows is in the
// shared store), so more than one may run. It places each VM create on a node (best of K by
// free capacity, image locality: placement.ts) and forwards it there; requests about one VM go
// to the node that runs it; the VM list is every ready node's. It runs no VMM and needs no
// host setup. Node-local state (images, volumes, functions) is reached on the nodes themselves.
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { request } from 'undici';
import { errorBody } from '../api/server.ts';
import { KilnError, isKilnError } from '../errors.ts';
import type { NodeRecord, Store } from '../store/store.ts';
import { COMMITTING_STATES } from '../vm/admission.ts';
import { place } from './placement.ts';
import { tokenMatches } from '../api/auth/token-file.ts';

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
}

/** Headers that describe one hop, not the message. */
const HOP = new Set(['host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'proxy-connection', 'te', 'trailer']);
const DEFAULT_MEMORY_MIB = 256;

export class ApiRole {
  private constructor(
    private readonly app: FastifyInstance,
    readonly url: string,
  ) {}

  static async start(o: ApiRoleOptions): Promise<ApiRole> {
    const app: FastifyInstance = Fastify({ loggerInstance: o.log as FastifyBaseLogger, bodyLimit: o.bodyLimit ?? 1024 ** 3 });
    app.removeAllContentTypeParsers();
    // Bodies are forwarded as they came: kept as bytes, parsed only where placement needs them.
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    app.setErrorHandler((err, req, reply) => {
      const ke = isKilnError(err) ? err : new KilnError('KILN_ERR_INTERNAL', (err as Error).message);
      if (ke.status >= 500) req.log.error({ err }, 'request failed');
      void reply.status(ke.status).send(errorBody(ke));
    });
    app.setNotFoundHandler((req, reply) => {
      const ke = new KilnError('KILN_ERR_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]} on the API role (it serves VMs and nodes; images, volumes and functions are served by each node)`);
      void reply.status(404).send(errorBody(ke));
    });
    app.addHook('onRequest', async (req) => {
      if (req.url.split('?')[0] === '/healthz') return;
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      if (!m || !tokenMatches(m[1]!, o.token)) throw new KilnError('KILN_ERR_UNAUTHORIZED', 'missing or wrong API token');
    });

    const auth = { authorization: `Bearer ${o.token}` };

    app.get('/healthz', async () => {
      const nodes = await o.store.listNodes();
      return { status: 'ok', role: 'api', nodes: { ready: nodes.filter((n) => n.state === 'ready').length, lost: nodes.filter((n) => n.state === 'lost').length } };
    });

    app.get('/v1/nodes', async () => (await o.store.listNodes()).map(nodeView));

    app.post('/v1/vms', async (req, reply) => {
      const body = parseJson(req.body);
      const demand = {
        vcpus: typeof body.vcpus === 'number' ? body.vcpus : 1,
        memoryMib: typeof body.memory_mib === 'number' ? body.memory_mib : DEFAULT_MEMORY_MIB,
        imageId: (await o.store.getImage(typeof body.image === 'string' ? body.image : 'default'))?.id,
      };
      const t0 = performance.now();
      const node = place(await freshNodes(o.store), demand, { k: o.k });
      const placeMs = performance.now() - t0;
      if (!node) throw new KilnError('KILN_ERR_CAPACITY', `no ready node has ${demand.vcpus} vCPUs and ${demand.memoryMib} MiB free`);
      void reply.header('x-kiln-node', node.name).header('x-kiln-placement-ms', placeMs.toFixed(3));
      return forward(req, reply, node, JSON.stringify(body));
    });

    app.get('/v1/vms', async () => {
      const nodes = (await o.store.listNodes()).filter((n) => n.state === 'ready');
      const lists = await Promise.all(
        nodes.map(async (n) => {
          const r = await request(new URL('/v1/vms', n.url), { headers: auth });
          if (r.statusCode !== 200) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${n.name} answered ${r.statusCode} to GET /v1/vms`);
          return ((await r.body.json()) as { vms: { created_at?: string }[] }).vms.map((vm) => ({ ...vm, node: n.name }));
        }),
      );
      // The node's own list shape ({ vms }), each VM tagged with its node.
      return { vms: lists.flat().sort((a, b) => String(a.created_at ?? '').localeCompare(String(b.created_at ?? ''))) };
    });

    const toOwner = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
      const vm = await o.store.getVm(req.params.id);
      if (!vm) throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${JSON.stringify(req.params.id)}`);
      const node = vm.nodeId ? await o.store.getNode(vm.nodeId) : null;
      if (!node || node.state !== 'ready') {
        throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `VM ${vm.id} is on node ${node?.name ?? vm.nodeId ?? '(none)'}, which is ${node?.state ?? 'not registered'}`, { vm: vm.id, node: vm.nodeId ?? null });
      }
      void reply.header('x-kiln-node', node.name);
      return forward(req, reply, node, req.body as Buffer | undefined);
    };
    app.all('/v1/vms/:id', toOwner);
    app.all('/v1/vms/:id/*', toOwner);

    await app.listen({ host: o.listenHost, port: o.listenPort });
    const addr = app.server.address();
    const url = typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : String(addr);
    return new ApiRole(app, url);
  }

  async close(): Promise<void> {
    await this.app.close();
  }
}

function parseJson(body: unknown): Record<string, unknown> {
  if (body === undefined || body === null || (Buffer.isBuffer(body) && body.length === 0)) return {};
  try {
    const v = JSON.parse(Buffer.isBuffer(body) ? body.toString('utf8') : String(body));
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch (e) {
    throw new KilnError('KILN_ERR_INVALID_JSON', `body is not JSON: ${(e as Error).message}`);
  }
  throw new KilnError('KILN_ERR_VALIDATION', 'body must be a JSON object');
}

/**
 * Ready nodes with what they have committed as the store says now (VM rows in committing
 * states), or as their last heartbeat said, whichever is more: a create placed a moment ago is
 * counted before the node's next heartbeat reports it.
 */
async function freshNodes(store: Store): Promise<NodeRecord[]> {
  const committed = new Map<string, { vcpus: number; memoryMib: number }>();
  for (const vm of await store.listVms()) {
    if (!vm.nodeId || !COMMITTING_STATES.includes(vm.state)) continue;
    const c = committed.get(vm.nodeId) ?? { vcpus: 0, memoryMib: 0 };
    c.vcpus += vm.vcpus;
    c.memoryMib += vm.memoryMib;
    committed.set(vm.nodeId, c);
  }
  return (await store.listNodes()).map((n) => {
    const c = committed.get(n.id);
    if (!c) return n;
    return { ...n, capacity: { ...n.capacity, committedVcpus: Math.max(n.capacity.committedVcpus, c.vcpus), committedMemoryMib: Math.max(n.capacity.committedMemoryMib, c.memoryMib) } };
  });
}

/** Sends the request on to `node` and streams its answer back (status, headers, body). */
async function forward(req: FastifyRequest, reply: FastifyReply, node: NodeRecord, body: Buffer | string | undefined): Promise<FastifyReply> {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP.has(k)) headers[k] = Array.isArray(v) ? v.join(', ') : v;
  const ac = new AbortController();
  // A client that goes away (a followed log, an exec stream) ends the upstream request too.
  reply.raw.on('close', () => ac.abort());
  let res;
  try {
    res = await request(new URL(req.url, node.url), {
      method: req.method as 'GET',
      headers,
      body: req.method === 'GET' || req.method === 'HEAD' ? undefined : body,
      signal: ac.signal,
      // Creates with ?wait=1, execs and followed logs last as long as they last.
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  } catch (e) {
    throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${node.name} (${node.url}) did not answer: ${(e as Error).message}`, { node: node.id });
  }
  void reply.code(res.statusCode);
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && !HOP.has(k)) void reply.header(k, v);
  return reply.send(res.body);
}

function nodeView(n: NodeRecord) {
  return {
    id: n.id, name: n.name, url: n.url, state: n.state, incarnation: n.incarnation,
    capacity: {
      vcpus: n.capacity.vcpus, memory_mib: n.capacity.memoryMib, committed_vcpus: n.capacity.committedVcpus,
      committed_memory_mib: n.capacity.committedMemoryMib, vms: n.capacity.vms, disk_free_bytes: n.capacity.diskFreeBytes,
      images: n.capacity.images, warm: n.capacity.warm,
    },
    registered_at: new Date(n.registeredAt).toISOString(),
    heartbeat_at: new Date(n.heartbeatAt).toISOString(),
    lost_at: n.lostAt === null ? null : new Date(n.lostAt).toISOString(),
  };
}

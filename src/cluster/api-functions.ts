// Functions through the API role. Every node serves every function: a version's code is in
// the shared store with it, and nodes follow deploys made through others (FunctionService's
// cluster sync). So a deploy goes to one ready node (the first that accepts it); a delete goes
// to every ready node, so none keeps serving it until its next sync. Invokes go to a ready node with a ready instance of
// the function (its heartbeat's `functions` report), else to the node with the most free
// memory among those that serve it; one that cannot be connected to is skipped, so a lost or
// dying node's calls are answered by the others. `x-kiln-node` on an invoke pins it to one
// node (and names, on the answer, the node that ran it).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KilnError, isKilnError } from '../errors.ts';
import type { NodeRecord, Store } from '../store/store.ts';
import { notDelivered, type NodeForwarder } from './node-forward.ts';

interface Ctx {
  store: Store;
  fwd: NodeForwarder;
}

type Json = Record<string, unknown>;
type Req = FastifyRequest<{ Params: { name: string } }>;

const freeMemory = (n: NodeRecord) => n.capacity.memoryMib - n.capacity.committedMemoryMib;

async function readyNodes(store: Store): Promise<NodeRecord[]> {
  const nodes = (await store.listNodes()).filter((n) => n.state === 'ready').sort((a, b) => freeMemory(b) - freeMemory(a));
  if (nodes.length === 0) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node');
  return nodes;
}

/**
 * Where to invoke `name`, best first: nodes with a ready instance (most free memory first),
 * then the other nodes that serve it; when no node has reported it yet (deployed less than a
 * heartbeat ago), every ready node.
 */
export function invokeOrder(nodes: readonly NodeRecord[], name: string): NodeRecord[] {
  const serving = nodes.filter((n) => n.capacity.functions?.[name] !== undefined);
  if (serving.length === 0) return [...nodes];
  const warm = serving.filter((n) => (n.capacity.functions![name] ?? 0) > 0);
  return [...warm, ...serving.filter((n) => !warm.includes(n))];
}

export function registerClusterFunctionRoutes(app: FastifyInstance, c: Ctx): void {
  const relay = (reply: FastifyReply, r: { status: number; body: unknown }, node?: NodeRecord) => {
    if (node) void reply.header('x-kiln-node', node.name);
    return reply.status(r.status).send(r.body);
  };

  /** POST/PUT: the first node that accepts makes the version (code included) in the store; the others follow it. */
  const deploy = async (req: FastifyRequest, reply: FastifyReply, method: 'POST' | 'PUT', path: string) => {
    const body = parseBody(req.body);
    const nodes = await readyNodes(c.store);
    let primary: NodeRecord | null = null;
    let first: { status: number; body: unknown } | null = null;
    for (const n of nodes) {
      try {
        first = await c.fwd.json(n, method, path, body);
        primary = n;
        break;
      } catch (e) {
        if (!(isKilnError(e) && notDelivered(e)) || n === nodes.at(-1)) throw e;
      }
    }
    return relay(reply, first!, primary ?? undefined);
  };

  app.post('/v1/functions', (req, reply) => deploy(req, reply, 'POST', '/v1/functions'));
  app.put<{ Params: { name: string } }>('/v1/functions/:name', (req, reply) => deploy(req, reply, 'PUT', `/v1/functions/${encodeURIComponent(req.params.name)}`));

  /** Every ready node's view of the function(s), merged: one entry per function, instances tagged with their node. */
  const gather = async <T>(path: string): Promise<{ node: NodeRecord; status: number; body: T }[]> => {
    const nodes = await readyNodes(c.store);
    return Promise.all(nodes.map(async (node) => ({ node, ...(await c.fwd.json<T>(node, 'GET', path)) })));
  };

  app.get('/v1/functions', async () => {
    const answers = await gather<{ functions: Json[]; pool: Json[] }>('/v1/functions');
    const byName = new Map<string, Json>();
    for (const a of answers) {
      if (a.status !== 200) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${a.node.name} answered ${a.status} to GET /v1/functions`, { node: a.node.id });
      for (const f of a.body.functions) byName.set(String(f.name), merge(byName.get(String(f.name)), f, a.node));
    }
    return {
      functions: [...byName.values()].sort((x, y) => String(x.name).localeCompare(String(y.name))),
      pool: answers.flatMap((a) => a.body.pool.map((p) => ({ ...p, node: a.node.name }))),
    };
  });

  app.get<{ Params: { name: string } }>('/v1/functions/:name', async (req, reply) => {
    const answers = await gather<Json>(`/v1/functions/${encodeURIComponent(req.params.name)}`);
    const found = answers.filter((a) => a.status === 200);
    if (found.length === 0) return relay(reply, answers.find((a) => a.status !== 404) ?? answers[0]!);
    let view: Json | undefined;
    for (const a of found) view = merge(view, a.body, a.node);
    return view;
  });

  app.delete<{ Params: { name: string } }>('/v1/functions/:name', async (req, reply) => {
    const answers = await Promise.all(
      (await readyNodes(c.store)).map(async (node) => ({ node, ...(await c.fwd.json(node, 'DELETE', `/v1/functions/${encodeURIComponent(req.params.name)}`)) })),
    );
    const done = answers.filter((a) => a.status === 204);
    if (done.length === 0) return relay(reply, answers.find((a) => a.status !== 404) ?? answers[0]!);
    return reply.status(204).send();
  });

  /** Invocations and logs are in the shared store: any node that serves the function has them all. */
  const fromAnyServing = async (req: Req, reply: FastifyReply) => {
    const order = invokeOrder(await readyNodes(c.store), req.params.name);
    void reply.header('x-kiln-node', order[0]!.name);
    return c.fwd.forward(req, reply, order[0]!, undefined);
  };
  app.get('/v1/functions/:name/invocations', fromAnyServing);
  app.get('/v1/functions/:name/logs', fromAnyServing);

  app.post<{ Params: { name: string } }>('/v1/functions/:name/invoke', async (req, reply) => {
    const nodes = await readyNodes(c.store);
    const pin = req.headers['x-kiln-node'];
    let order: NodeRecord[];
    if (typeof pin === 'string' && pin) {
      const n = (await c.store.listNodes()).find((x) => x.name === pin || x.id === pin);
      if (!n) throw new KilnError('KILN_ERR_VALIDATION', `x-kiln-node: no node ${JSON.stringify(pin)}`, { field: 'x-kiln-node' });
      if (n.state !== 'ready') throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${n.name} is ${n.state}`, { node: n.id });
      order = [n];
    } else {
      order = invokeOrder(nodes, req.params.name);
    }
    for (const [i, node] of order.entries()) {
      try {
        void reply.header('x-kiln-node', node.name);
        return await c.fwd.forward(req, reply, node, req.body as Buffer | undefined);
      } catch (e) {
        // Not connected: the call never reached that node, so it may run on the next.
        if (!(isKilnError(e) && notDelivered(e)) || i === order.length - 1) throw e;
      }
    }
    throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node serves this function');
  });
}

/** One function's view from several nodes: the first's configuration, everyone's instances. */
function merge(into: Json | undefined, view: Json, node: NodeRecord): Json {
  const instances = ((view.instances as Json[] | undefined) ?? []).map((i) => ({ ...i, node: node.name }));
  if (!into) return { ...view, instances, queued: Number(view.queued ?? 0), nodes: [node.name] };
  return {
    ...into,
    instances: [...(into.instances as Json[]), ...instances],
    queued: Number(into.queued ?? 0) + Number(view.queued ?? 0),
    nodes: [...(into.nodes as string[]), node.name],
  };
}

function parseBody(body: unknown): unknown {
  if (body === undefined || body === null || (Buffer.isBuffer(body) && body.length === 0)) return {};
  try {
    return JSON.parse(Buffer.isBuffer(body) ? body.toString('utf8') : String(body));
  } catch (e) {
    throw new KilnError('KILN_ERR_INVALID_JSON', `body is not JSON: ${(e as Error).message}`);
  }
}

// Volumes, snapshots, templates and image files through the API role. Their rows are in the
// shared store, their files on one node's disk: the row's node_id says which (set by the node
// that made them, node-scoped-store.ts). So:
// - volumes: a create goes to the node named by `node` in the body (or `x-kiln-node`), else to
//   the ready node with the most free disk; get and delete go to the volume's node;
// - snapshots: made through the VM's route (POST /v1/vms/{id}/snapshots, forwarded to the VM's
//   node), got and deleted on the snapshot's node; a restore is placed there (api-placement.ts);
// - templates: a build goes where the template already is (it answers at once), else where
//   placement puts it; get and delete go to the template's node;
// - lists are every ready node's, merged (api-merge.ts);
// - images: an import or upload goes to the ready node with the most free disk (or the one
//   named by `x-kiln-node`: an import reads a directory of that host), a delete and a gc to
//   every ready node, answered with what each did.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KilnError, type ErrorCode } from '../errors.ts';
import type { NodeRecord } from '../store/store.ts';
import { gatherLists, mergeLists, type Json } from './api-merge.ts';
import { chooseNode, holderOf, parseJsonObject, resolveNeeds, type ClusterRouteContext } from './api-placement.ts';
import { DEFAULT_TEMPLATE_MEMORY_MIB, DEFAULT_TEMPLATE_VCPUS } from '../snapshot/templates.ts';

type IdReq = FastifyRequest<{ Params: { id: string } }>;

export function registerClusterStorageRoutes(app: FastifyInstance, c: ClusterRouteContext): void {
  const names = async () => new Map((await c.store.listNodes()).map((n) => [n.id, n.name]));
  const send = (req: FastifyRequest, reply: FastifyReply, node: NodeRecord, body: Buffer | string | NodeJS.ReadableStream | undefined = req.body as Buffer | undefined) => {
    void reply.header('x-kiln-node', node.name);
    return c.fwd.forward(req, reply, node, body);
  };

  /**
   * A resource whose files are on one node's disk (its row's node_id): the list is every ready
   * node's, merged, each item tagged with its holder; a get or a delete goes to the holder.
   */
  const held = <R extends { id: string; nodeId?: string | null }>(
    plural: 'volumes' | 'snapshots' | 'templates', rows: () => Promise<R[]>, one: (id: string) => Promise<R | null>, notFound: ErrorCode, label: (r: R) => string,
  ) => {
    app.get(`/v1/${plural}`, async () => {
      const [lists, all, n] = await Promise.all([gatherLists(c.store, c.fwd, `/v1/${plural}`, plural), rows(), names()]);
      const holder = new Map(all.map((r) => [r.id, r.nodeId]));
      return { [plural]: mergeLists(lists, (id) => holder.get(id), n) };
    });
    const toHolder = async (req: IdReq, reply: FastifyReply) => {
      const r = await one(req.params.id);
      if (!r) throw new KilnError(notFound, `no ${plural.slice(0, -1)} ${JSON.stringify(req.params.id)}`);
      return send(req, reply, await holderOf(c.store, r.nodeId, label(r)));
    };
    app.get(`/v1/${plural}/:id`, toHolder);
    app.delete(`/v1/${plural}/:id`, toHolder);
  };

  // ---- volumes
  app.post('/v1/volumes', async (req, reply) => {
    const t0 = performance.now();
    const { node: hint, ...rest } = parseJsonObject(req.body);
    const header = req.headers['x-kiln-node'];
    const want = typeof hint === 'string' ? hint : typeof header === 'string' && header ? header : undefined;
    if (hint !== undefined && typeof hint !== 'string') throw new KilnError('KILN_ERR_VALIDATION', 'body/node must be a node name or id', { field: 'node' });
    const node = await diskNode(c, want);
    c.metrics.placed('volume', want ? 'pinned' : 'placed', performance.now() - t0);
    // The node's schema knows no `node`: the body goes on without it.
    return send(req, reply, node, JSON.stringify(rest));
  });
  held('volumes', () => c.store.listVolumes(), (id) => c.store.getVolume(id), 'KILN_ERR_VOLUME_NOT_FOUND', (v) => `volume ${v.name}`);

  // ---- snapshots (made through /v1/vms/{id}/snapshots, the VM's node)
  held('snapshots', () => c.store.listSnapshots(), (id) => c.store.getSnapshot(id), 'KILN_ERR_SNAPSHOT_NOT_FOUND', (x) => `snapshot ${x.id}`);

  // ---- templates
  held('templates', () => c.store.listTemplates(), (id) => c.store.getTemplate(id), 'KILN_ERR_TEMPLATE_NOT_FOUND', (t) => `template ${t.id}`);
  app.post('/v1/templates', async (req, reply) => {
    const t0 = performance.now();
    const body = parseJsonObject(req.body);
    const image = typeof body.image === 'string' ? body.image : undefined;
    if (!image) throw new KilnError('KILN_ERR_VALIDATION', 'body/image is required', { field: 'image' });
    const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
    // The template of this image at this size, where it is built already (template locality).
    const [resolved, nodes] = await Promise.all([
      resolveNeeds(c.store, { template: image, vcpus: num(body.vcpus), memoryMib: num(body.memory_mib), volumes: [] }, { vcpus: DEFAULT_TEMPLATE_VCPUS, memoryMib: DEFAULT_TEMPLATE_MEMORY_MIB }, c.images),
      c.ledger.view(),
    ]);
    let chosen;
    try {
      chosen = chooseNode(nodes, resolved, { k: c.k });
    } catch (e) {
      c.metrics.placed('template', 'failed', performance.now() - t0);
      throw e;
    }
    c.metrics.placed('template', chosen.kind, performance.now() - t0);
    return send(req, reply, chosen.node);
  });

  // ---- image files
  // An upload is streamed to its node, never held whole in this process.
  app.addContentTypeParser('application/x-tar', (_req, payload, done) => done(null, payload));
  const toDiskNode = async (req: FastifyRequest, reply: FastifyReply) => {
    const t0 = performance.now();
    const header = req.headers['x-kiln-node'];
    const want = typeof header === 'string' && header ? header : undefined;
    const node = await diskNode(c, want);
    c.metrics.placed('image', want ? 'pinned' : 'placed', performance.now() - t0);
    return send(req, reply, node, req.body as Buffer | NodeJS.ReadableStream | undefined);
  };
  app.post('/v1/images/import', toDiskNode);
  app.post('/v1/images/upload', toDiskNode);

  app.delete<{ Params: { id: string } }>('/v1/images/:id', async (req, reply) => {
    // One node after the other: the first that holds it deletes the row (its in-use check
    // counts every node's VMs) and its file; the rest answer 404 or drop their copy.
    const results: { node: string; status: number; error?: string }[] = [];
    for (const node of await readyNodes(c)) {
      const r = await c.fwd.json<Json | null>(node, 'DELETE', `/v1/images/${encodeURIComponent(req.params.id)}`);
      results.push({ node: node.name, status: r.status, ...(r.status >= 400 ? { error: String((r.body?.error as Json | undefined)?.code ?? r.status) } : {}) });
      if (r.status >= 400 && r.status !== 404) {
        // A refusal (in use, still pulling) or a failure: the node's answer as it came.
        void reply.header('x-kiln-node', node.name).header('x-kiln-node-results', resultsHeader(results));
        return reply.status(r.status).send(r.body);
      }
    }
    void reply.header('x-kiln-node-results', resultsHeader(results));
    if (results.some((r) => r.status === 204)) return reply.status(204).send();
    throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${JSON.stringify(req.params.id)}`);
  });

  app.post('/v1/images/gc', async (req) => {
    const body = parseJsonObject(req.body);
    const answers = await Promise.all((await readyNodes(c)).map(async (node) => ({ node: node.name, ...(await c.fwd.json<Json>(node, 'POST', '/v1/images/gc', body)) })));
    return mergeGc(answers);
  });
}

/** The node a volume or image goes to: the one named (name or id), or the ready node with the most free disk. */
async function diskNode(c: ClusterRouteContext, want: string | undefined): Promise<NodeRecord> {
  const nodes = await c.store.listNodes();
  if (want) {
    const n = nodes.find((x) => x.name === want || x.id === want);
    if (!n) throw new KilnError('KILN_ERR_VALIDATION', `no node ${JSON.stringify(want)}`, { field: 'node' });
    if (n.state !== 'ready') throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${n.name} is ${n.state}`, { node: n.name });
    return n;
  }
  const ready = nodes.filter((n) => n.state === 'ready').sort((a, b) => b.capacity.diskFreeBytes - a.capacity.diskFreeBytes);
  if (!ready[0]) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node');
  return ready[0];
}

async function readyNodes(c: ClusterRouteContext): Promise<NodeRecord[]> {
  const nodes = (await c.store.listNodes()).filter((n) => n.state === 'ready').sort((a, b) => a.name.localeCompare(b.name));
  if (nodes.length === 0) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node');
  return nodes;
}

function resultsHeader(results: { node: string; status: number }[]): string {
  return results.map((r) => `${r.node}=${r.status}`).join(', ');
}

/**
 * Every node's garbage collection, summed, with each node's own answer under `nodes`: what it
 * removed, or its error. A node that failed does not fail the others' work.
 */
export function mergeGc(answers: readonly { node: string; status: number; body: Json | null }[]): Json {
  const sum = { removed_images: [] as string[], removed_files: 0, removed_blobs: 0, freed_bytes: 0, skipped_in_flight: false };
  const nodes: Json[] = [];
  for (const a of answers) {
    if (a.status !== 200 || !a.body) {
      nodes.push({ node: a.node, status: a.status, error: (a.body?.error as Json | undefined) ?? null });
      continue;
    }
    const b = a.body;
    for (const id of (b.removed_images as string[] | undefined) ?? []) if (!sum.removed_images.includes(id)) sum.removed_images.push(id);
    sum.removed_files += Number(b.removed_files ?? 0);
    sum.removed_blobs += Number(b.removed_blobs ?? 0);
    sum.freed_bytes += Number(b.freed_bytes ?? 0);
    sum.skipped_in_flight ||= b.skipped_in_flight === true;
    nodes.push({ node: a.node, status: a.status, result: b });
  }
  return { ...sum, nodes };
}

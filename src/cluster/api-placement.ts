// Where a create goes (a VM, a container, a template build), given what it uses. A snapshot's
// files and a volume's file are on one node's disk (their rows' node_id), so a create that
// restores the one or attaches the other must run there: it is pinned, and a pin to a node that
// is not ready is KILN_ERR_NODE_UNAVAILABLE, pins to two different nodes KILN_ERR_NODE_CONFLICT.
// A template clone prefers a node that already built the template (a clone instead of a cold
// boot and a snapshot); any node can build it otherwise. Everything else is best of K by free
// capacity with image locality (placement.ts).
import type { FastifyReply, FastifyRequest } from 'fastify';
import { KilnError, isKilnError } from '../errors.ts';
import { DEFAULT_TEMPLATE_MEMORY_MIB, DEFAULT_TEMPLATE_VCPUS } from '../snapshot/templates.ts';
import type { NodeRecord, Store } from '../store/store.ts';
import type { ApiMetrics } from './api-metrics.ts';
import type { ImageIds } from './image-ids.ts';
import { notDelivered, type NodeForwarder } from './node-forward.ts';
import type { NodeLedger } from './node-ledger.ts';
import { headroom, place, type PlacementDemand } from './placement.ts';

/** What a create body asks for, as far as placement cares. */
export interface CreateNeeds {
  vcpus?: number;
  memoryMib?: number;
  /** Image id, name or reference (image locality). */
  image?: string;
  /** A snapshot id: the VM is restored from it, on its node. */
  snapshot?: string;
  /** A template id, or an image whose template is cloned. */
  template?: string;
  /** Named volumes attached (ids or names). */
  volumes: string[];
  /** `x-kiln-node`: the caller's own pin (a node name or id). */
  node?: string;
}

/** Reads what placement needs from a create body (VM or container). Host directories are not volumes. */
export function createNeeds(body: Record<string, unknown>, pin?: string): CreateNeeds {
  const str = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
  const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
  const volumes = Array.isArray(body.volumes)
    ? body.volumes.flatMap((a) => (a && typeof a === 'object' && typeof (a as { volume?: unknown }).volume === 'string' ? [(a as { volume: string }).volume] : []))
    : [];
  return {
    vcpus: num(body.vcpus), memoryMib: num(body.memory_mib), image: str(body.image),
    snapshot: str(body.snapshot), template: str(body.template), volumes, node: str(pin),
  };
}

/** One reason a create must run on one node. */
export interface Pin {
  /** A node id; or, for the caller's own pin (`byName`), a node name or id. */
  nodeId: string;
  byName?: boolean;
  /** For the error: "snapshot snap-1", "volume data", "x-kiln-node n2". */
  why: string;
}

/** What the store says about the create's resources, resolved. */
export interface Resolved {
  demand: PlacementDemand;
  pins: Pin[];
  /** Nodes that hold a ready template the create would clone (preferred, not required). */
  prefer: string[];
}

/** Resolves a create's resources against the store: its demand, its pins, its preferences. */
export async function resolveNeeds(
  store: Store, needs: CreateNeeds, defaults: { vcpus: number; memoryMib: number },
  images: Pick<ImageIds, 'resolve'> = { resolve: async (ref) => (await store.getImage(ref))?.id },
): Promise<Resolved> {
  const pins: Pin[] = [];
  let vcpus = needs.vcpus ?? defaults.vcpus;
  let memoryMib = needs.memoryMib ?? defaults.memoryMib;
  let imageId: string | undefined;
  const prefer: string[] = [];
  const [snap, volumes, imageIdOf] = await Promise.all([
    needs.snapshot ? store.getSnapshot(needs.snapshot) : null,
    Promise.all(needs.volumes.map(async (v) => [v, await store.getVolume(v)] as const)),
    // Only the image's id matters here (locality): remembered a few seconds (image-ids.ts).
    images.resolve(needs.image ?? (needs.template ? needs.template : 'default')),
  ]);
  const image = imageIdOf ? { id: imageIdOf } : null;
  if (needs.snapshot) {
    if (!snap) throw new KilnError('KILN_ERR_SNAPSHOT_NOT_FOUND', `no snapshot ${JSON.stringify(needs.snapshot)}`);
    // A restore has the snapshot's size, whatever the body says.
    vcpus = snap.meta.guest.vcpus;
    memoryMib = snap.meta.guest.memoryMib;
    imageId = snap.meta.guest.imageId;
    if (snap.nodeId) pins.push({ nodeId: snap.nodeId, why: `snapshot ${snap.id}` });
  } else if (needs.template) {
    // A template id, or an image whose template (at this size) is cloned.
    const byId = await store.getTemplate(needs.template);
    const templates = byId ? [byId] : image ? (await store.listTemplates()).filter((t) => t.imageId === image.id) : [];
    if (byId) {
      vcpus = needs.vcpus ?? byId.vcpus;
      memoryMib = needs.memoryMib ?? byId.memoryMib;
    } else {
      vcpus = needs.vcpus ?? DEFAULT_TEMPLATE_VCPUS;
      memoryMib = needs.memoryMib ?? DEFAULT_TEMPLATE_MEMORY_MIB;
    }
    imageId = byId?.imageId ?? image?.id;
    for (const t of templates) {
      const sized = byId !== null || (t.vcpus === vcpus && t.memoryMib === memoryMib);
      if (t.state === 'ready' && t.nodeId && sized && !prefer.includes(t.nodeId)) prefer.push(t.nodeId);
    }
  } else {
    imageId = image?.id;
  }
  for (const [name, v] of volumes) {
    if (!v) throw new KilnError('KILN_ERR_VOLUME_NOT_FOUND', `no volume ${JSON.stringify(name)}`);
    if (v.nodeId) pins.push({ nodeId: v.nodeId, why: `volume ${v.name}` });
  }
  if (needs.node) pins.push({ nodeId: needs.node, byName: true, why: `x-kiln-node ${needs.node}` });
  return { demand: { vcpus, memoryMib, ...(imageId ? { imageId } : {}) }, pins, prefer };
}

/** How the node was chosen (the API role's metrics count each). */
export type PlacementKind = 'pinned' | 'template' | 'placed';

/**
 * The node for a resolved create: the one every pin names (it must be ready and fit), else the
 * best of K among the preferred nodes that fit, else among all ready nodes that fit.
 */
export function chooseNode(nodes: readonly NodeRecord[], r: Resolved, o: { k?: number; random?: () => number } = {}): { node: NodeRecord; kind: PlacementKind } {
  const name = (id: string) => nodes.find((n) => n.id === id)?.name ?? id;
  const pins = r.pins.map((p) => {
    if (!p.byName) return p;
    const n = nodes.find((x) => x.name === p.nodeId || x.id === p.nodeId);
    if (!n) throw new KilnError('KILN_ERR_VALIDATION', `x-kiln-node: no node ${JSON.stringify(p.nodeId)}`, { field: 'x-kiln-node' });
    return { nodeId: n.id, why: p.why };
  });
  const pinned = [...new Set(pins.map((p) => p.nodeId))];
  if (pinned.length > 1) {
    const by = pinned.map((id) => `${pins.filter((p) => p.nodeId === id).map((p) => p.why).join(', ')} on ${name(id)}`).join('; ');
    throw new KilnError('KILN_ERR_NODE_CONFLICT', `the create uses resources on different nodes (${by}); a VM runs on one node`, {
      nodes: pinned.map(name), pins: pins.map((p) => ({ node: name(p.nodeId), what: p.why })),
    });
  }
  if (pinned.length === 1) {
    const why = pins.map((p) => p.why).join(', ');
    const n = nodes.find((x) => x.id === pinned[0]);
    if (!n || n.state !== 'ready') {
      throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `${why} is on node ${n?.name ?? pinned[0]}, which is ${n?.state ?? 'not registered'}`, { node: n?.name ?? pinned[0] });
    }
    if (headroom(n, r.demand) < 0) {
      throw new KilnError('KILN_ERR_CAPACITY', `${why} is on node ${n.name}, which has not ${r.demand.vcpus} vCPUs and ${r.demand.memoryMib} MiB free`, { node: n.name });
    }
    return { node: n, kind: 'pinned' };
  }
  const preferred = nodes.filter((n) => r.prefer.includes(n.id) && n.state === 'ready' && headroom(n, r.demand) >= 0);
  if (preferred.length) return { node: place(preferred, r.demand, o)!, kind: 'template' };
  const n = place(nodes, r.demand, o);
  if (!n) throw new KilnError('KILN_ERR_CAPACITY', `no ready node has ${r.demand.vcpus} vCPUs and ${r.demand.memoryMib} MiB free`);
  return { node: n, kind: 'placed' };
}

/** The ready node that holds a resource (`nodeId` of its row); a row without one (made before, or a single host's) goes to any ready node. */
export async function holderOf(store: Store, nodeId: string | null | undefined, what: string): Promise<NodeRecord> {
  if (nodeId) {
    const n = await store.getNode(nodeId);
    if (!n || n.state !== 'ready') throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `${what} is on node ${n?.name ?? nodeId}, which is ${n?.state ?? 'not registered'}`, { node: n?.name ?? nodeId });
    return n;
  }
  const any = (await store.listNodes()).find((n) => n.state === 'ready');
  if (!any) throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', 'no ready node');
  return any;
}

/** What the create routes share: the store, the way to nodes, the metrics, K. */
export interface ClusterRouteContext {
  store: Store;
  fwd: NodeForwarder;
  metrics: ApiMetrics;
  k?: number;
  /** The nodes and their committed resources, in memory (node-ledger.ts). */
  ledger: Pick<NodeLedger, 'view' | 'reserve' | 'refresh'>;
  /** Image id by name or reference, cached (image-ids.ts). */
  images: Pick<ImageIds, 'resolve'>;
}

/**
 * A create (VM or container) placed and sent on to its node as it came. The answer carries
 * `x-kiln-node`, `x-kiln-placement-ms` and `Server-Timing` (store, place, node), which
 * bench/cluster reads.
 */
export async function forwardCreate(
  c: ClusterRouteContext, req: FastifyRequest, reply: FastifyReply, what: 'vm' | 'container', defaults: { vcpus: number; memoryMib: number },
): Promise<FastifyReply> {
  const t0 = performance.now();
  const body = parseJsonObject(req.body);
  const pin = req.headers['x-kiln-node'];
  // A plain create reads nothing from the store on its way: the node view is in memory and the
  // image's id cached; a snapshot, a template or volumes add their own rows' reads, at once.
  const [resolved, view] = await Promise.all([resolveNeeds(c.store, createNeeds(body, typeof pin === 'string' ? pin : undefined), defaults, c.images), c.ledger.view()]);
  // A create pinned to one node (its snapshot's, its volumes', x-kiln-node) must find that
  // node's state as it is now, not up to one refresh ago: it has read the store already.
  let nodes = resolved.pins.length ? (await c.ledger.refresh(), await c.ledger.view()) : view;
  // Nodes this create has been to: one that never took the connection, or (unpinned creates
  // only) one whose admission refused it as over capacity before making anything, as it may be
  // when another API process placed there since this one's view was read. Each node is tried
  // once, so a create is sent at most once per node.
  const unreachable = new Set<string>();
  const full = new Set<string>();
  const tried = (id: string) => unreachable.has(id) || full.has(id);
  // Pinned creates have nowhere else to go; a template's clone may have built the template
  // (a golden VM and its snapshot) before its admission refused: neither is sent on again.
  const movable = resolved.pins.length === 0 && body.template === undefined;
  // A client that went away while the create was being placed again is not followed up.
  let gone = false;
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) gone = true;
  });
  const timing = (t0: number, t1: number, t2: number) => (upstreamMs: number) =>
    `store;dur=${(t1 - t0).toFixed(3)}, place;dur=${(t2 - t1).toFixed(3)}, node;dur=${upstreamMs.toFixed(3)}`;
  for (;;) {
    const t1 = performance.now();
    let chosen;
    try {
      chosen = chooseNode(nodes.filter((n) => !tried(n.id)), resolved, { k: c.k });
    } catch (e) {
      c.metrics.placed(what, 'failed', performance.now() - t0);
      // Every other node was tried: say which and why rather than just "no capacity".
      if ((unreachable.size || full.size) && isKilnError(e) && e.code === 'KILN_ERR_CAPACITY') {
        const names = (ids: Iterable<string>) => [...ids].map((id) => nodes.find((n) => n.id === id)?.name ?? id);
        const why = [unreachable.size ? `not reachable: ${names(unreachable).join(', ')}` : '', full.size ? `at capacity when asked: ${names(full).join(', ')}` : ''].filter(Boolean).join('; ');
        throw new KilnError('KILN_ERR_CAPACITY', `${e.message} (${why})`, { ...e.details, unreachable: names(unreachable), full: names(full) });
      }
      throw e;
    }
    const t2 = performance.now();
    c.metrics.placed(what, chosen.kind, t2 - t0);
    // Where the time went, for bench/cluster (Server-Timing: a standard header, no body change).
    void reply.header('x-kiln-node', chosen.node.name).header('x-kiln-placement-ms', (t2 - t0).toFixed(3));
    const placed = c.ledger.reserve(chosen.node.id, resolved.demand);
    try {
      const sent = await c.fwd.forwardUnlessRefused(req, reply, chosen.node, req.body as Buffer | undefined,
        (status, code) => movable && status === 429 && code === 'KILN_ERR_CAPACITY', timing(t0, t1, t2));
      if ('reply' in sent) {
        placed(reply.statusCode < 300);
        return sent.reply;
      }
      placed(false);
      full.add(chosen.node.id);
    } catch (e) {
      placed(false);
      // A node that refused the connection never saw the create (it died, or the view is from
      // before it was marked lost): placed again without it. A pinned create then finds its
      // node gone (KILN_ERR_NODE_UNAVAILABLE or KILN_ERR_CAPACITY naming it).
      if (!notDelivered(e)) throw e;
      unreachable.add(chosen.node.id);
    }
    // Not placed there after all: the answer, whatever it is, must not name that node.
    reply.removeHeader('x-kiln-node').removeHeader('x-kiln-placement-ms');
    if (gone) return reply;
    // Placed again on a view read now.
    await c.ledger.refresh();
    nodes = await c.ledger.view();
  }
}

/** A JSON object body (kept as bytes by the API role's parser). */
export function parseJsonObject(body: unknown): Record<string, unknown> {
  if (body === undefined || body === null || (Buffer.isBuffer(body) && body.length === 0)) return {};
  try {
    const v = JSON.parse(Buffer.isBuffer(body) ? body.toString('utf8') : String(body));
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch (e) {
    throw new KilnError('KILN_ERR_INVALID_JSON', `body is not JSON: ${(e as Error).message}`);
  }
  throw new KilnError('KILN_ERR_VALIDATION', 'body must be a JSON object');
}

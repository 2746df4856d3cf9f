// GET /v1/events: Server-Sent Events of every state change. A client resumes where it left
// off with `?since=SEQ` or the standard `Last-Event-ID` header: stored events after that
// sequence number are replayed oldest first, a page at a time and only as fast as the client
// reads, then live events follow with no gap and no duplicate. When retention has already
// removed events the client asked for, it gets an explicit `gap` event saying which sequence
// numbers are gone instead of a silent hole. A client that stops reading is cut off once its
// queue passes the stream cap (src/api/bounded-stream.ts) and resumes from its last id.
// The stream is written once, over an EventSource: kilnd's is its own bus and store; a
// cluster's API role follows the cluster-wide events table (src/cluster/store-events.ts).
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import type { EventRecord, Store } from '../../store/store.ts';
import { BoundedStream } from '../bounded-stream.ts';
import { EventsQuery } from '../schemas.ts';

const HEARTBEAT_MS = 15_000;
/** Stored events read per replay page. */
const REPLAY_PAGE = 500;

/** Where /v1/events reads from: stored events (replay) and live ones. */
export interface EventSource {
  store: Pick<Store, 'firstEventSeq' | 'listEvents'>;
  /** Live events, in sequence order; returns (or resolves, once following) the unsubscribe. */
  subscribe(fn: (e: EventRecord) => void): (() => void) | Promise<() => void>;
  /** A `?vm=` id or name → the VM's id; throws KILN_ERR_VM_NOT_FOUND. */
  vmId(idOrName: string): Promise<string>;
}

export function registerEventRoutes(root: FastifyInstance, daemon: Daemon): void {
  registerEventStream(root, { store: daemon.store, subscribe: (fn) => daemon.bus.subscribe(fn), vmId: async (id) => (await daemon.vms.get(id)).id });
}

export function registerEventStream(root: FastifyInstance, source: EventSource): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  app.get('/v1/events', {
    schema: {
      summary: 'Server-sent events: every state change (`vm.created`, `vm.state`, `vm.deleted`, `image.*`)',
      description:
        '`?vm=` filters to one VM; `?since=SEQ` (or the `Last-Event-ID` header) first replays stored events after that sequence number, oldest first. ' +
        'If retention already removed some of them, a `gap` event (`{"type":"gap","from":N,"to":M}`) names the missing range first. ' +
        'A client that stops reading is disconnected once 1 MiB is queued for it, and resumes from its last id.',
      tags: ['events'], querystring: EventsQuery,
    },
  }, async (req, reply) => {
    const vmFilter = req.query.vm ? await source.vmId(req.query.vm) : undefined;
    const lastEventId = req.headers['last-event-id'];
    const resumeFrom = req.query.since ?? (typeof lastEventId === 'string' && /^\d{1,15}$/.test(lastEventId) ? lastEventId : undefined);
    // Subscribed before the replay so nothing falls between the two; live events queue until
    // the replay has caught up, and duplicates are dropped by sequence number.
    const live: EventRecord[] = [];
    let replaying = true;
    const unsubscribe = await source.subscribe((e) => (replaying ? live.push(e) : send(e)));
    if (req.raw.destroyed) {
      // Gone while the subscription was made (a cluster's follower reads the store first).
      unsubscribe();
      return reply.hijack();
    }
    reply.raw.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    const out = new BoundedStream(reply.raw);
    let lastSeq = 0;
    const send = (e: EventRecord) => {
      if (e.seq <= lastSeq) return;
      lastSeq = e.seq;
      if (vmFilter && e.vmId !== vmFilter) return;
      out.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify({ seq: e.seq, ts: new Date(e.ts).toISOString(), type: e.type, vm: e.vmId, ...e.data })}\n\n`);
    };
    const beat = setInterval(() => out.write(': keep-alive\n\n'), HEARTBEAT_MS);
    out.onClose(() => {
      clearInterval(beat);
      unsubscribe();
    });
    if (resumeFrom !== undefined) {
      const since = Number(resumeFrom);
      const first = await source.store.firstEventSeq();
      if (first !== null && since + 1 < first) {
        out.write(`event: gap\ndata: ${JSON.stringify({ type: 'gap', from: since + 1, to: first - 1, reason: 'removed by retention' })}\n\n`);
      }
      lastSeq = since;
      for (;;) {
        const page = await source.store.listEvents({ afterSeq: lastSeq, vmId: vmFilter, limit: REPLAY_PAGE });
        // A filtered page advances the cursor past its last event, matching or not.
        for (const e of page) send(e);
        if (page.length < REPLAY_PAGE || out.closed) break;
        await out.drained();
      }
      // Live events that arrived meanwhile and are older than the cursor were in the replay.
    }
    for (const e of live.splice(0)) send(e);
    replaying = false;
    out.write(': connected\n\n');
    return reply.hijack();
  });
}

import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import type { EventRecord } from '../../store/store.ts';
import { EventsQuery } from '../schemas.ts';

const HEARTBEAT_MS = 15_000;

export function registerEventRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  app.get('/v1/events', {
    schema: {
      summary: 'Server-sent events: every state change (`vm.created`, `vm.state`, `vm.deleted`, `image.*`)',
      description: '`?vm=` filters to one VM; `?since=SEQ` first replays stored events after that sequence number.',
      tags: ['events'], querystring: EventsQuery,
    },
  }, async (req, reply) => {
    const vmFilter = req.query.vm ? (await daemon.vms.get(req.query.vm)).id : undefined;
    reply.raw.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    const send = (e: EventRecord) => {
      if (vmFilter && e.vmId !== vmFilter) return;
      reply.raw.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify({ seq: e.seq, ts: new Date(e.ts).toISOString(), type: e.type, vm: e.vmId, ...e.data })}\n\n`);
    };
    // Subscribe before replaying so nothing falls between the two; drop replayed duplicates.
    let lastSeq = 0;
    const live: EventRecord[] = [];
    let replaying = true;
    const unsubscribe = daemon.bus.subscribe((e) => (replaying ? live.push(e) : e.seq > lastSeq && (send(e), (lastSeq = e.seq))));
    if (req.query.since !== undefined) {
      for (const e of await daemon.store.listEvents({ afterSeq: Number(req.query.since), vmId: vmFilter })) {
        send(e);
        lastSeq = e.seq;
      }
    }
    for (const e of live) if (e.seq > lastSeq) (send(e), (lastSeq = e.seq));
    replaying = false;
    reply.raw.write(': connected\n\n');
    const beat = setInterval(() => reply.raw.write(': keep-alive\n\n'), HEARTBEAT_MS);
    req.raw.on('close', () => {
      clearInterval(beat);
      unsubscribe();
    });
    return reply.hijack();
  });
}

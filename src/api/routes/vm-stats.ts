// GET /v1/vms/{id}/stats: CPU and memory of any VM from two samples of its guest agent's
// counters, the same numbers `kiln stats` shows for containers (the dashboard's per-VM gauges).
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { statsFromSamples } from '../../containers/stats.ts';
import type { Daemon } from '../../daemon.ts';
import { ContainerStats, ContainerStatsQuery, ErrorBody, IdParams } from '../schemas.ts';

const errors = { 404: ErrorBody, 409: ErrorBody, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody };

export function registerVmStatsRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  app.get('/v1/vms/:id/stats', {
    schema: {
      summary: 'CPU and memory of a VM, from two samples by its guest agent',
      tags: ['vms'], params: IdParams, querystring: ContainerStatsQuery, response: { 200: ContainerStats, ...errors },
    },
  }, async (req) => {
    const vm = await daemon.vms.get(req.params.id);
    const agent = await daemon.vms.agent(vm.id);
    const a = await agent.stats();
    await new Promise((r) => setTimeout(r, req.query.interval_ms ? Number(req.query.interval_ms) : 500));
    const b = await agent.stats();
    return { id: vm.id, name: vm.name, ...statsFromSamples(a, b) };
  });
}

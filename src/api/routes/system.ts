import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import { Health } from '../schemas.ts';

export function registerSystemRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  app.get('/healthz', { schema: { summary: 'Liveness and host capabilities', tags: ['system'], response: { 200: Health } } }, async () => ({
    status: 'ok' as const,
    version: daemon.version,
    backend: daemon.driver.name,
    backend_reason: daemon.backend.reason,
    accelerator: daemon.accel.accelerator,
    accelerator_reason: daemon.accel.reason,
    kernel: daemon.assets.kernel.version,
    vms: (await daemon.store.listVms()).length,
    capacity: await daemon.admission.report(),
  }));
  app.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['system'], hide: false } }, async (_req, reply) => {
    reply.type(daemon.metrics.registry.contentType);
    return daemon.metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}

import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import { NO_AUTH_WARNING } from '../auth/no-auth.ts';
import { Health } from '../schemas.ts';

export function registerSystemRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  // The one API route without the token (security: []): it answers monitors, and holds no secret.
  app.get('/healthz', { schema: { summary: 'Liveness and host capabilities (no token needed)', tags: ['system'], security: [], response: { 200: Health } } }, async () => ({
    status: 'ok' as const,
    version: daemon.version,
    backend: daemon.driver.name,
    backend_reason: daemon.backend.reason,
    accelerator: daemon.accel.accelerator,
    accelerator_reason: daemon.accel.reason,
    kernel: daemon.assets.kernel.version,
    vms: (await daemon.store.listVms()).length,
    auth: daemon.config.auth,
    ...(daemon.config.auth === 'none' ? { auth_warning: NO_AUTH_WARNING } : {}),
    capacity: await daemon.admission.report(),
    pools: { clones: daemon.snapshots.pool.report() },
    ...(daemon.driver.confinementReport ? { confinement: daemon.driver.confinementReport() } : {}),
  }));
  app.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['system'], hide: false } }, async (_req, reply) => {
    reply.type(daemon.metrics.registry.contentType);
    return daemon.metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}

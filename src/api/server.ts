// The HTTP API (Fastify). Schemas are compiled at registration, so a bad schema fails at
// boot; every error leaves as {statusCode, code, error, message}.
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { ERRORS, KilnError, isKilnError } from '../errors.ts';
import type { Daemon } from '../daemon.ts';
import { WS_PROTOCOL } from '../sdk/api-token.ts';
import { registerRequestGuard } from './auth/request-guard.ts';
import { registerContainerRoutes } from './routes/containers.ts';
import { registerConsoleRoutes } from './routes/console.ts';
import { registerEventRoutes } from './routes/events.ts';
import { registerExecRoutes } from './routes/exec.ts';
import { registerFunctionRoutes } from './routes/functions.ts';
import { registerImageRoutes } from './routes/images.ts';
import { registerSystemRoutes } from './routes/system.ts';
import { registerVmRoutes } from './routes/vms.ts';
import { registerVmStatsRoutes } from './routes/vm-stats.ts';
import { registerSnapshotRoutes } from './routes/snapshots.ts';
import { registerVolumeRoutes } from './routes/volumes.ts';
import { isPublicWebPath, registerWebRoutes } from './routes/web.ts';
import { drainOversizedBody } from './oversized-body.ts';

export const BODY_LIMIT = 1024 * 1024;

/** Fastify's own error codes, mapped to kiln's stable codes. */
const FASTIFY_CODES: Record<string, keyof typeof ERRORS> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'KILN_ERR_INVALID_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'KILN_ERR_INVALID_JSON',
  FST_ERR_CTP_BODY_TOO_LARGE: 'KILN_ERR_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'KILN_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'KILN_ERR_VALIDATION',
};

export function errorBody(err: KilnError) {
  return {
    statusCode: err.status,
    code: err.code,
    error: ERRORS[err.code].summary,
    message: err.message,
    ...(err.details ? { details: err.details } : {}),
  };
}

export function toKilnError(err: FastifyError | Error): KilnError {
  if (isKilnError(err)) return err;
  const fe = err as FastifyError;
  if (fe.validation) {
    const where = fe.validationContext ?? 'request';
    return new KilnError('KILN_ERR_VALIDATION', `${where}: ${fe.message.replace(/^(body|querystring|params)\s*/, '')}`, {
      errors: fe.validation.map((v) => ({ path: v.instancePath, message: v.message, params: v.params })),
    });
  }
  if (fe.code && FASTIFY_CODES[fe.code]) return new KilnError(FASTIFY_CODES[fe.code]!, fe.message);
  if (fe.statusCode && fe.statusCode < 500) return new KilnError('KILN_ERR_VALIDATION', fe.message);
  // JSON.parse errors surface as SyntaxError when the content-type parser is bypassed.
  if (err instanceof SyntaxError) return new KilnError('KILN_ERR_INVALID_JSON', err.message);
  return new KilnError('KILN_ERR_INTERNAL', err.message);
}

export async function buildServer(daemon: Daemon, log: Logger): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    bodyLimit: BODY_LIMIT,
    ajv: {
      // Unknown fields are an error, not silently dropped; "1" is not a number.
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: true },
    },
  });

  app.setErrorHandler((err, req, reply) => {
    const ke = toKilnError(err as Error);
    if (ke.status >= 500) req.log.error({ err }, 'request failed');
    if (ke.code === 'KILN_ERR_BODY_TOO_LARGE') drainOversizedBody(req, reply);
    void reply.status(ke.status).send(errorBody(ke));
  });
  app.setNotFoundHandler((req, reply) => {
    const ke = new KilnError('KILN_ERR_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`);
    void reply.status(404).send(errorBody(ke));
  });

  const { auth, apiToken } = daemon.config;
  // No silent fallback to an open API: 'token' without a token is a wiring bug.
  if (auth === 'token' && !apiToken) throw new KilnError('KILN_ERR_INTERNAL', 'API auth is on but kilnd has no token');
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'kiln API', version: daemon.version, description: 'Provision microVMs: VMs, images, events.' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      security: [{ bearer: [] }],
    },
  });

  // Before the routes: the console route is a WebSocket one (kiln vm console).
  // A browser offers [kiln.v1, kiln.token.<token>]; the answer names kiln.v1, never the token.
  await app.register(websocket, {
    options: { maxPayload: 1024 * 1024, handleProtocols: (protocols) => (protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false) },
  });
  // After the WebSocket plugin: its onRequest hook marks upgrade requests, and only a marked
  // request's socket is closed when the guard refuses it (else it lingers and close() hangs).
  registerRequestGuard(app, {
    token: auth === 'none' ? null : apiToken!,
    listenHost: daemon.config.listenHost,
    allowedHosts: daemon.config.allowedHosts,
    isPublic: (url) => url.split('?')[0] === '/healthz' || isPublicWebPath(url),
  });
  // How long kilnd took to answer (Server-Timing, a standard header): the cluster's API role adds
  // its own entries after it, so a client can tell the node's time from the forwarding's.
  app.addHook('onSend', async (_req, reply) => {
    if (!reply.hasHeader('server-timing')) void reply.header('server-timing', `app;dur=${reply.elapsedTime.toFixed(3)}`);
  });
  registerSystemRoutes(app, daemon);
  registerVmRoutes(app, daemon);
  registerVmStatsRoutes(app, daemon);
  registerSnapshotRoutes(app, daemon);
  registerImageRoutes(app, daemon);
  registerVolumeRoutes(app, daemon);
  registerEventRoutes(app, daemon);
  registerExecRoutes(app, daemon);
  registerContainerRoutes(app, daemon);
  registerConsoleRoutes(app, daemon);
  await registerWebRoutes(app);
  registerFunctionRoutes(app, daemon);
  return app;
}

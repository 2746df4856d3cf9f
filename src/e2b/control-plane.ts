// E2B's control plane (the REST API the SDK calls at E2B_API_URL), on kiln's sandboxes:
// shapes, status codes and headers as in E2B's OpenAPI (spec/openapi.yml in e2b-dev/infra)
// and as the `e2b` SDK reads them. Auth is X-API-KEY (src/e2b/api-key.ts); every error is
// {code, message} with code = the HTTP status (the SDK branches on `error.code === 404`).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { EgressSpec } from '../net/egress.ts';
import { apiKeyMatches } from './api-key.ts';
import { E2bError, e2bErrorBody } from './errors.ts';
import { ENVD_VERSION, type SandboxService } from './sandbox-service.ts';
import type { SandboxRecord } from './sandbox-store.ts';

const MAX_LIMIT = 100;
/** What a sandbox's disk is reported as: its scratch overlay's size cap. */
const DISK_SIZE_MB = 1024;

interface NewSandbox {
  templateID?: unknown;
  timeout?: unknown;
  autoPause?: unknown;
  metadata?: unknown;
  envVars?: unknown;
  allow_internet_access?: unknown;
  network?: { allowOut?: unknown; denyOut?: unknown } | null;
}

function stringMap(v: unknown, what: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) {
    throw new E2bError(400, `${what} must be an object of strings`);
  }
  return v as Record<string, string>;
}

function timeoutOf(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new E2bError(400, 'timeout must be a non-negative integer (seconds)');
  return v;
}

/** allow_internet_access / network.{allowOut,denyOut} → kiln's egress policy (CIDRs only). */
export function egressOf(body: NewSandbox): EgressSpec | undefined {
  if (body.allow_internet_access === false) return 'none';
  const n = body.network;
  if (!n) return undefined;
  const list = (v: unknown, what: string): string[] => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new E2bError(400, `network.${what} must be an array of strings`);
    return v as string[];
  };
  const allow = list(n.allowOut, 'allowOut');
  const deny = list(n.denyOut, 'denyOut');
  if (!allow.length && !deny.length) return undefined;
  const denyAll = deny.includes('0.0.0.0/0');
  if (deny.length && !denyAll) throw new E2bError(400, 'network.denyOut: kiln supports denying all traffic (0.0.0.0/0) with an allowOut list of CIDRs');
  if (allow.some((a) => !/^\d+\.\d+\.\d+\.\d+(\/\d+)?$/.test(a))) throw new E2bError(400, 'network.allowOut: kiln allows IPv4 addresses and CIDRs (no domain names)');
  return { allow: allow.map((a) => (a.includes('/') ? a : `${a}/32`)), internet: !denyAll };
}

export function sandboxView(s: SandboxRecord, domain: string | null) {
  return {
    templateID: s.templateId,
    sandboxID: s.id,
    clientID: 'kiln',
    envdVersion: ENVD_VERSION,
    envdAccessToken: s.accessToken,
    trafficAccessToken: null,
    domain,
  };
}

export function listedView(s: SandboxRecord) {
  return {
    templateID: s.templateId,
    sandboxID: s.id,
    clientID: 'kiln',
    startedAt: new Date(s.startedAt).toISOString(),
    endAt: new Date(s.endAt).toISOString(),
    cpuCount: s.cpuCount,
    memoryMB: s.memoryMb,
    diskSizeMB: DISK_SIZE_MB,
    metadata: s.metadata,
    state: s.state,
    envdVersion: ENVD_VERSION,
    volumeMounts: [],
  };
}

/** `metadata` as the SDK sends it: one query value holding `k=v&k2=v2`, each part URI-encoded. */
export function parseMetadataQuery(q: string | undefined): Record<string, string> {
  if (!q) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(q)) {
    const dec = (x: string) => {
      try {
        return decodeURIComponent(x);
      } catch {
        return x;
      }
    };
    out[dec(k)] = dec(v);
  }
  return out;
}

export function pageToken(s: Pick<SandboxRecord, 'startedAt' | 'id'>): string {
  return Buffer.from(JSON.stringify([s.startedAt, s.id])).toString('base64url');
}

function afterToken(token: string): [number, string] {
  try {
    const v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (Array.isArray(v) && typeof v[0] === 'number' && typeof v[1] === 'string') return [v[0], v[1]];
  } catch {
    /* below */
  }
  throw new E2bError(400, 'invalid nextToken');
}

/** Filters, orders and pages the sandboxes like GET /v2/sandboxes. */
export function listPage(all: SandboxRecord[], q: Record<string, string | undefined>): { items: SandboxRecord[]; next: string | null } {
  const meta = parseMetadataQuery(q.metadata);
  const states = q.state ? q.state.split(',').map((s) => s.trim()).filter(Boolean) : ['running', 'paused'];
  for (const s of states) if (s !== 'running' && s !== 'paused') throw new E2bError(400, `invalid state ${JSON.stringify(s)}`);
  const limit = q.limit === undefined ? MAX_LIMIT : Number(q.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) throw new E2bError(400, `limit must be between 1 and ${MAX_LIMIT}`);
  const after = q.nextToken ? afterToken(q.nextToken) : null;
  const startedAfter = q.startedAfter ? Date.parse(q.startedAfter) : null;
  if (startedAfter !== null && Number.isNaN(startedAfter)) throw new E2bError(400, 'startedAfter must be an RFC 3339 time');
  let rows = all.filter((s) => states.includes(s.state)
    && Object.entries(meta).every(([k, v]) => s.metadata[k] === v)
    && (!q.template || s.templateId === q.template)
    && (startedAfter === null || s.startedAt > startedAfter));
  if (q.order === 'desc') rows = rows.reverse();
  const cmp = (s: SandboxRecord) => (s.startedAt - after![0]) || s.id.localeCompare(after![1]);
  if (after) rows = rows.filter((s) => (q.order === 'desc' ? cmp(s) < 0 : cmp(s) > 0));
  const items = rows.slice(0, limit);
  return { items, next: rows.length > limit ? pageToken(items[items.length - 1]!) : null };
}

export function registerControlPlane(app: FastifyInstance, sandboxes: SandboxService, key: string | null): void {
  const domain = sandboxes.opts.domain;
  app.setErrorHandler((err, req, reply) => {
    const fe = err as { statusCode?: number; validation?: unknown };
    const body = fe.statusCode && fe.statusCode < 500 && !(err instanceof E2bError) ? { code: fe.statusCode, message: (err as Error).message } : e2bErrorBody(err);
    if (body.code >= 500) req.log.error({ err }, 'e2b request failed');
    void reply.status(body.code).send(body);
  });
  app.setNotFoundHandler((req, reply) => void reply.status(404).send({ code: 404, message: `no route ${req.method} ${req.url.split('?')[0]}` }));
  app.addHook('onRequest', async (req) => {
    if (req.url === '/health') return;
    const given = req.headers['x-api-key'];
    if (!apiKeyMatches(typeof given === 'string' ? given : undefined, key)) {
      throw new E2bError(401, given === undefined ? 'missing X-API-KEY header' : 'Invalid API key, please check your credentials');
    }
  });

  app.get('/health', async (_req, reply) => reply.status(200).send({ message: 'Health check successful' }));

  const create = async (req: FastifyRequest, reply: FastifyReply) => {
    const body = (req.body ?? {}) as NewSandbox;
    if (typeof body.templateID !== 'string' || !body.templateID) throw new E2bError(400, 'templateID is required');
    if (body.autoPause !== undefined && typeof body.autoPause !== 'boolean') throw new E2bError(400, 'autoPause must be a boolean');
    const metadata = stringMap(body.metadata, 'metadata');
    const envVars = stringMap(body.envVars, 'envVars');
    const timeout = timeoutOf(body.timeout);
    const egress = egressOf(body);
    const s = await sandboxes.create({
      templateID: body.templateID,
      ...(timeout !== undefined ? { timeout } : {}),
      ...(metadata ? { metadata } : {}),
      ...(envVars ? { envVars } : {}),
      ...(body.autoPause !== undefined ? { autoPause: body.autoPause as boolean } : {}),
      ...(egress ? { egress } : {}),
    });
    return reply.status(201).send(sandboxView(s, domain));
  };
  app.post('/sandboxes', create);
  app.post('/v2/sandboxes', create);

  const list = async (req: FastifyRequest, reply: FastifyReply, paged: boolean) => {
    const q = req.query as Record<string, string | undefined>;
    const { items, next } = listPage(sandboxes.list(), paged ? q : { ...q, state: 'running', limit: String(MAX_LIMIT), nextToken: undefined });
    if (paged && next) void reply.header('x-next-token', next);
    return reply.send(items.map(listedView));
  };
  app.get('/v2/sandboxes', (req, reply) => list(req, reply, true));
  app.get('/sandboxes', (req, reply) => list(req, reply, false));

  app.get('/sandboxes/:id', async (req, reply) => {
    const s = sandboxes.get((req.params as { id: string }).id);
    return reply.send({
      ...listedView(s),
      envdAccessToken: s.accessToken,
      domain,
      lifecycle: { onTimeout: s.autoPause ? 'pause' : 'kill', autoResume: false },
    });
  });

  app.delete('/sandboxes/:id', async (req, reply) => {
    await sandboxes.kill((req.params as { id: string }).id);
    return reply.status(204).send();
  });

  app.post('/sandboxes/:id/timeout', async (req, reply) => {
    const t = timeoutOf(((req.body ?? {}) as { timeout?: unknown }).timeout);
    if (t === undefined) throw new E2bError(400, 'timeout is required');
    await sandboxes.setTimeout((req.params as { id: string }).id, t);
    return reply.status(204).send();
  });

  app.post('/sandboxes/:id/refreshes', async (req, reply) => {
    const d = timeoutOf(((req.body ?? {}) as { duration?: unknown }).duration);
    const id = (req.params as { id: string }).id;
    const s = sandboxes.get(id);
    const extended = Math.max(s.endAt - Date.now(), (d ?? 60) * 1000);
    await sandboxes.setTimeout(id, Math.ceil(extended / 1000));
    return reply.status(204).send();
  });

  app.post('/sandboxes/:id/pause', async (req, reply) => {
    await sandboxes.pause((req.params as { id: string }).id);
    return reply.status(204).send();
  });

  const connect = (resumeOnly: boolean) => async (req: FastifyRequest, reply: FastifyReply) => {
    const id = (req.params as { id: string }).id;
    const t = timeoutOf(((req.body ?? {}) as { timeout?: unknown }).timeout);
    if (resumeOnly && sandboxes.get(id).state === 'running') throw new E2bError(409, `sandbox ${id} is already running`);
    const { resumed, sandbox } = await sandboxes.connect(id, t);
    return reply.status(resumed ? 201 : 200).send(sandboxView(sandbox, domain));
  };
  app.post('/sandboxes/:id/connect', connect(false));
  app.post('/v2/sandboxes/:id/connect', connect(false));
  app.post('/sandboxes/:id/resume', connect(true));

  app.get('/sandboxes/:id/metrics', async (req, reply) => reply.send(await sandboxes.metrics((req.params as { id: string }).id)));
}

import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Daemon } from '../../daemon.ts';
import { MAX_ARCHIVE_BYTES } from '../../functions/code-package.ts';
import type { FunctionService } from '../../functions/function-service.ts';
import type { InvocationRecord } from '../../store/function-store.ts';
import {
  CreateFunctionBody, FunctionList, FunctionParams, FunctionView, InvocationList, InvocationView, InvocationsQuery, InvokeDetail, InvokeQuery, UpdateFunctionBody,
} from '../function-schemas.ts';
import { ErrorBody, truthy } from '../schemas.ts';

const errors = { 400: ErrorBody, 404: ErrorBody, 409: ErrorBody, 413: ErrorBody, 422: ErrorBody, 429: ErrorBody, 500: ErrorBody, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody };
/** A base64 archive at its limit, plus the JSON around it. */
const DEPLOY_BODY_LIMIT = Math.ceil(MAX_ARCHIVE_BYTES / 3) * 4 + 1024 * 1024;
const INVOKE_BODY_LIMIT = 6 * 1024 * 1024;
const iso = (ms: number) => new Date(ms).toISOString();

async function functionView(fns: FunctionService, name: string, createdAt?: number): Promise<FunctionView> {
  const e = fns.get(name);
  const v = e.current;
  const snap = e.scheduler.snapshot();
  const now = Date.now();
  return {
    name: v.function,
    runtime: v.runtime,
    image: v.image ?? null,
    handler: v.handler,
    version: v.version,
    vcpu: v.vcpus,
    memory_mb: v.memoryMib,
    env: v.env,
    timeout_ms: v.timeoutMs,
    min_instances: v.minInstances,
    max_instances: v.maxInstances,
    concurrency: v.concurrency,
    idle_timeout: v.idleTimeoutS,
    queue_size: v.queueSize,
    code: { kind: v.codeKind, sha256: v.codeSha256, size: v.codeSize },
    load_error: v.loadError,
    state: v.loadError ? 'error' : 'ready',
    instances: snap.instances.map((m) => ({
      vm: m.instance?.blank.vmId ?? null, version: m.version, state: m.state, inflight: m.inflight, origin: m.instance?.blank.origin ?? null, idle_ms: m.inflight ? 0 : now - m.lastUsed,
    })),
    queued: snap.queued,
    created_at: iso(createdAt ?? (await fns.getVersion(name, 1).then((f) => f.createdAt, () => v.createdAt))),
    updated_at: iso(v.createdAt),
  };
}

export function invocationView(i: InvocationRecord): InvocationView {
  return {
    id: i.id,
    function: i.function,
    version: i.version,
    status: i.status,
    cold: i.cold,
    source: i.source,
    instance: i.instance,
    started_at: iso(i.startedAt),
    duration_ms: i.durationMs,
    guest_ms: i.guestMs,
    host_overhead_ms: i.durationMs !== null && i.guestMs !== null ? Math.max(0, i.durationMs - i.guestMs) : null,
    instance_start: instanceStart(i.timeline),
    timeline: i.timeline,
    error: i.error,
    logs: i.logs,
  };
}

export function registerFunctionRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  const fns = daemon.functions;

  app.post('/v1/functions', {
    bodyLimit: DEPLOY_BODY_LIMIT,
    schema: {
      summary: 'Deploy a function (version 1)',
      description: 'Inline `code` or a base64 `archive` (zip, tar, tar.gz) with dependencies. Instances start on the first call (from the warm pool when it has one).',
      tags: ['functions'], body: CreateFunctionBody, response: { 201: FunctionView, ...errors },
    },
  }, async (req, reply) => {
    const v = await fns.create(req.body);
    return reply.status(201).send(await functionView(fns, v.function, v.createdAt));
  });

  app.get('/v1/functions', {
    schema: { summary: 'List functions, and the warm pool of blank instances', tags: ['functions'], response: { 200: FunctionList } },
  }, async () => ({
    functions: await Promise.all(fns.list().map((e) => functionView(fns, e.name))),
    pool: fns.pool.describe(),
  }));

  app.get('/v1/functions/:name', {
    schema: { summary: 'Get a function: current version, configuration, instances', tags: ['functions'], params: FunctionParams, response: { 200: FunctionView, ...errors } },
  }, async (req) => functionView(fns, req.params.name));

  app.put('/v1/functions/:name', {
    bodyLimit: DEPLOY_BODY_LIMIT,
    schema: {
      summary: 'Deploy a new version of a function',
      description: 'Omitted fields (code included) keep the current version’s. Calls in flight finish on the old version; new calls run the new one; old instances drain and stop.',
      tags: ['functions'], params: FunctionParams, body: UpdateFunctionBody, response: { 200: FunctionView, ...errors },
    },
  }, async (req) => {
    const v = await fns.update(req.params.name, req.body);
    return functionView(fns, v.function);
  });

  app.delete('/v1/functions/:name', {
    schema: { summary: 'Delete a function and its instances', tags: ['functions'], params: FunctionParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await fns.delete(req.params.name);
    return reply.status(204).send(null);
  });

  app.post('/v1/functions/:name/invoke', {
    bodyLimit: INVOKE_BODY_LIMIT,
    schema: {
      summary: 'Invoke a function; the body is the event (any JSON)',
      description:
        'Answers the handler’s return value as JSON (or {result, invocation} with `?detail=1`). Headers: x-kiln-invocation, x-kiln-cold, x-kiln-source, x-kiln-duration-ms, x-kiln-guest-ms. ' +
        'A function error is KILN_ERR_FUNCTION_ERROR with details {type, message, stack, logs}; timeouts, out-of-memory and crashes have their own codes; 429 when max_instances are busy and the queue is full.',
      tags: ['functions'], params: FunctionParams, querystring: InvokeQuery, body: Type.Unknown(),
      response: { 200: Type.Unknown(), ...errors },
    },
  }, async (req, reply) => {
    const out = await fns.invoke(req.params.name, req.body ?? null);
    const inv = out.invocation;
    void reply.headers({
      'x-kiln-invocation': inv.id,
      'x-kiln-cold': String(inv.cold),
      'x-kiln-source': inv.source ?? '',
      'x-kiln-duration-ms': inv.durationMs?.toFixed(3) ?? '',
      'x-kiln-guest-ms': inv.guestMs?.toFixed(3) ?? '',
    });
    if (out.error) throw out.error;
    if (truthy(req.query.detail)) return reply.type('application/json').send(JSON.stringify({ result: out.result, invocation: invocationView(inv) }));
    return reply.type('application/json').send(JSON.stringify(out.result ?? null));
  });

  app.get('/v1/functions/:name/invocations', {
    schema: {
      summary: 'Recent invocations (newest first): status, duration, cold/warm, instance and its source, timeline, console output',
      tags: ['functions'], params: FunctionParams, querystring: InvocationsQuery, response: { 200: InvocationList, ...errors },
    },
  }, async (req) => ({
    invocations: (await fns.invocations(req.params.name, req.query.limit ? Math.min(1000, Number(req.query.limit)) : 100)).map(invocationView),
  }));

  app.get('/v1/functions/:name/logs', {
    schema: {
      summary: 'Console output of recent invocations, oldest first, one header line per invocation',
      tags: ['functions'], params: FunctionParams, querystring: InvocationsQuery,
      response: { 200: { content: { 'text/plain': { schema: Type.String() } } }, ...errors },
    },
  }, async (req, reply) => {
    const list = await fns.invocations(req.params.name, req.query.limit ? Math.min(1000, Number(req.query.limit)) : 100);
    const text = list.reverse().map((i) => `--- ${iso(i.startedAt)} ${i.id} v${i.version} ${i.status}${i.cold ? ' cold' : ''} ${i.durationMs?.toFixed(1) ?? '?'} ms\n${i.logs}${i.logs && !i.logs.endsWith('\n') ? '\n' : ''}`).join('');
    return reply.type('text/plain; charset=utf-8').send(text);
  });
}

/** How a cold call's VM came up (boot or snapshot restore), from its timeline. */
function instanceStart(timeline: { phase: string }[]): 'boot' | 'restore' | null {
  const p = timeline.find((t) => t.phase.startsWith('instance.start.'));
  const how = p?.phase.slice('instance.start.'.length);
  return how === 'boot' || how === 'restore' ? how : null;
}

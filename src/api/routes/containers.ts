// /v1/containers: an OCI image run as its own microVM (src/containers/).
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { renderLog, type LogRecord } from '../../containers/container-log.ts';
import { containerView } from '../../containers/container-view.ts';
import type { Daemon } from '../../daemon.ts';
import { BoundedStream } from '../bounded-stream.ts';
import {
  Container, ContainerList, ContainerListQuery, ContainerLogsQuery, ContainerRemoveQuery, ContainerStats, ContainerStatsQuery,
  CreateContainerBody, ErrorBody, IdParams, StopQuery, WaitQuery, truthy,
} from '../schemas.ts';

const errors = { 400: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 500: ErrorBody, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody, 507: ErrorBody };

export function registerContainerRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  const containers = daemon.containers;
  const view = (info: Awaited<ReturnType<typeof containers.get>>) => containerView(daemon.store, info);
  const waitMs = (q: { timeout_ms?: string }) => (q.timeout_ms ? Number(q.timeout_ms) : daemon.config.bootTimeoutMs + 10_000);
  const tags = ['containers'];

  app.post('/v1/containers', {
    schema: {
      summary: 'Create and start a container (the image is pulled if absent)',
      description: 'Returns at once with the container `starting`, or once its process runs with `?wait=1`.',
      tags, body: CreateContainerBody, querystring: WaitQuery, response: { 201: Container, ...errors },
    },
  }, async (req, reply) => {
    const info = await containers.create(req.body);
    if (truthy(req.query.wait)) await daemon.vms.waitFor(info.container.id, ['ready'], waitMs(req.query));
    return reply.status(201).send(await view(await containers.get(info.container.id)));
  });

  app.get('/v1/containers', {
    schema: { summary: 'List containers (running ones; `?all=1` also exited and failed)', tags, querystring: ContainerListQuery, response: { 200: ContainerList } },
  }, async (req) => ({ containers: await Promise.all((await containers.list(truthy(req.query.all))).map(view)) }));

  app.get('/v1/containers/:id', {
    schema: { summary: 'Get a container by id or name', tags, params: IdParams, response: { 200: Container, ...errors } },
  }, async (req) => view(await containers.get(req.params.id)));

  app.delete('/v1/containers/:id', {
    schema: {
      summary: 'Remove a container (`?force=1` kills a running one)', tags, params: IdParams, querystring: ContainerRemoveQuery,
      response: { 204: Type.Null(), ...errors },
    },
  }, async (req, reply) => {
    await containers.remove(req.params.id, truthy(req.query.force));
    return reply.status(204).send(null);
  });

  app.post('/v1/containers/:id/stop', {
    schema: {
      summary: 'Stop: SIGTERM to the process, SIGKILL after the grace period; the restart policy leaves it stopped',
      tags, params: IdParams, querystring: StopQuery, response: { 200: Container, ...errors },
    },
  }, async (req) => view(await containers.stop(req.params.id, req.query.grace_ms ? Number(req.query.grace_ms) : undefined)));

  app.post('/v1/containers/:id/start', {
    schema: { summary: 'Start a stopped container', tags, params: IdParams, querystring: WaitQuery, response: { 200: Container, ...errors } },
  }, async (req) => {
    const info = await containers.start(req.params.id);
    if (truthy(req.query.wait)) await daemon.vms.waitFor(info.container.id, ['ready'], waitMs(req.query));
    return view(await containers.get(info.container.id));
  });

  for (const op of ['pause', 'resume'] as const) {
    app.post(`/v1/containers/:id/${op}`, {
      schema: { summary: op === 'pause' ? 'Freeze a container (its VM’s vCPUs)' : 'Continue a paused container', tags, params: IdParams, response: { 200: Container, ...errors } },
    }, async (req) => view(op === 'pause' ? await containers.pause(req.params.id) : await containers.resume(req.params.id)));
  }

  app.get('/v1/containers/:id/stats', {
    schema: { summary: 'CPU and memory of the container, from two samples by the guest agent', tags, params: IdParams, querystring: ContainerStatsQuery, response: { 200: ContainerStats, ...errors } },
  }, async (req) => {
    const info = await containers.get(req.params.id);
    const s = await containers.stats(info.container.id, req.query.interval_ms ? Number(req.query.interval_ms) : undefined);
    return { id: info.container.id, name: info.vm.name, ...s };
  });

  app.get('/v1/containers/:id/logs', {
    schema: {
      summary: 'The process’s stdout/stderr (kept by kilnd, bounded); `?follow=1` streams until the container exits',
      tags, params: IdParams, querystring: ContainerLogsQuery,
      response: { 200: { content: { 'text/plain': { schema: Type.String() }, 'application/x-ndjson': { schema: Type.String() } } }, ...errors },
    },
  }, async (req, reply) => {
    const q = req.query;
    const tail = q.tail === undefined ? undefined : Number(q.tail);
    const ndjson = q.format === 'ndjson';
    const timestamps = truthy(q.timestamps);
    const piece = (r: LogRecord) => ndjson
      ? `${JSON.stringify({ ts: new Date(r.ts).toISOString(), stream: r.stream, text: r.text, partial: r.partial })}\n`
      : renderLog([r], timestamps);
    if (!truthy(q.follow)) {
      const recs = await containers.logRecords(req.params.id, tail);
      return reply.type(ndjson ? 'application/x-ndjson' : 'text/plain; charset=utf-8').send(ndjson ? recs.map(piece).join('') : renderLog(recs, timestamps));
    }
    const { container } = await containers.get(req.params.id);
    reply.raw.writeHead(200, { 'content-type': ndjson ? 'application/x-ndjson' : 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    // A workload can write faster than a client reads: the client is cut off, never buffered for.
    const out = new BoundedStream(reply.raw);
    // Text: a timestamp goes only where a line starts, across pieces.
    let atLineStart = true;
    const stop = await containers.follow(container.id, (r) => {
      if (ndjson || !timestamps) out.write(piece(r));
      else {
        out.write((atLineStart ? `${new Date(r.ts).toISOString()} ` : '') + r.text + (r.partial ? '' : '\n'));
        atLineStart = !r.partial;
      }
    }, (end) => {
      if (ndjson) out.write(`${JSON.stringify({ end: { state: end.state, exit_code: end.exitCode, removed: end.removed } })}\n`);
      out.end();
    }, tail);
    out.onClose(() => stop());
    return reply.hijack();
  });
}

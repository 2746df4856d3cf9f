import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Daemon } from '../../daemon.ts';
import { BoundedStream } from '../bounded-stream.ts';
import type { VmState } from '../../store/store.ts';
import { KilnError } from '../../errors.ts';
import { CreateVmBody, ErrorBody, IdParams, LogsQuery, ResizeDiskBody, StopQuery, Vm, VmList, VmListQuery, WaitQuery, truthy } from '../schemas.ts';
import { matchesLabels, parseLabelSelector, validateLabels, vmKind } from '../../vm/labels.ts';
import { vmView } from '../views.ts';

const errors = { 400: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 500: ErrorBody, 502: ErrorBody, 504: ErrorBody, 507: ErrorBody };

export function registerVmRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  const vms = daemon.vms;
  const waitMs = (q: { timeout_ms?: string }) => (q.timeout_ms ? Number(q.timeout_ms) : daemon.config.bootTimeoutMs + 10_000);

  app.post('/v1/vms', {
    schema: {
      summary: 'Create and boot a VM',
      description: 'Returns at once with the VM in `creating`, or once it is `ready` with `?wait=1`.',
      tags: ['vms'],
      body: CreateVmBody,
      querystring: WaitQuery,
      response: { 201: Vm, ...errors },
    },
  }, async (req, reply) => {
    const vm = await createVm(daemon, req.body);
    const out = truthy(req.query.wait) ? await vms.waitFor(vm.id, ['ready'], waitMs(req.query)) : vm;
    return reply.status(201).send(await vmView(daemon, out));
  });

  app.get('/v1/vms', {
    schema: { summary: 'List VMs, optionally only those with some labels or of one kind', tags: ['vms'], querystring: VmListQuery, response: { 200: VmList, 400: ErrorBody } },
  }, async (req) => {
    const q = req.query;
    const selectors = (q.label === undefined ? [] : Array.isArray(q.label) ? q.label : [q.label]).map(parseLabelSelector);
    const listed = (await vms.list()).filter((vm) => matchesLabels(vm.labels, selectors) && (!q.kind || vmKind(vm) === q.kind));
    return { vms: await Promise.all(listed.map((vm) => vmView(daemon, vm))) };
  });

  app.get('/v1/vms/:id', {
    schema: { summary: 'Get a VM by id or name, with its timeline', tags: ['vms'], params: IdParams, response: { 200: Vm, ...errors } },
  }, async (req) => vmView(daemon, await vms.get(req.params.id)));

  app.delete('/v1/vms/:id', {
    schema: { summary: 'Delete a VM (stops it at once if running)', tags: ['vms'], params: IdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await vms.delete(req.params.id);
    return reply.status(204).send(null);
  });

  app.post('/v1/vms/:id/stop', {
    schema: {
      summary: 'Stop a VM: SIGTERM to the workload, then power off; hard stop after the grace period',
      tags: ['vms'], params: IdParams, querystring: StopQuery, response: { 200: Vm, ...errors },
    },
  }, async (req) => vmView(daemon, await vms.stop(req.params.id, req.query.grace_ms ? Number(req.query.grace_ms) : undefined)));

  app.post('/v1/vms/:id/start', {
    schema: { summary: 'Start a stopped VM', tags: ['vms'], params: IdParams, querystring: WaitQuery, response: { 200: Vm, ...errors } },
  }, async (req) => {
    const vm = await vms.start(req.params.id);
    const out = truthy(req.query.wait) ? await vms.waitFor(vm.id, ['ready'], waitMs(req.query)) : vm;
    return vmView(daemon, out);
  });

  app.post('/v1/vms/:id/disk/resize', {
    schema: {
      summary: 'Grow a stopped classic VM\'s disk (offline: the file is extended, then e2fsck and resize2fs)',
      tags: ['vms'], params: IdParams, body: ResizeDiskBody, response: { 200: Vm, ...errors },
    },
  }, async (req) => vmView(daemon, await vms.resizeDisk(req.params.id, req.body.size_gib)));

  for (const [op, target] of [['pause', 'paused'], ['resume', 'ready']] as const) {
    app.post(`/v1/vms/:id/${op}`, {
      schema: { summary: `${op[0]!.toUpperCase()}${op.slice(1)} a VM`, tags: ['vms'], params: IdParams, response: { 200: Vm, ...errors } },
    }, async (req) => {
      const vm = op === 'pause' ? await vms.pause(req.params.id) : await vms.resume(req.params.id);
      return vmView(daemon, { ...vm, state: target as VmState });
    });
  }

  app.get('/v1/vms/:id/logs', {
    schema: {
      summary: 'Serial console output of the VM (kiln control lines removed); `?follow=1` streams new output',
      tags: ['vms'], params: IdParams, querystring: LogsQuery,
      response: { 200: { content: { 'text/plain': { schema: Type.String() } } }, ...errors },
    },
  }, async (req, reply) => {
    if (!truthy(req.query.follow)) {
      return reply.type('text/plain; charset=utf-8').send(await vms.logs(req.params.id));
    }
    const { id } = await vms.get(req.params.id);
    const backlog = await vms.logs(id);
    const follower = await vms.followLogs(id);
    reply.raw.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    // A guest can write faster than a client reads: the client is cut off, never buffered for.
    const out = new BoundedStream(reply.raw);
    out.write(backlog);
    follower.on('line', (line) => {
      if (!line.startsWith('@kiln:')) out.write(line + '\n');
    });
    const unsubscribe = daemon.bus.subscribe((e) => {
      if (e.type === 'vm.deleted' && e.vmId === id) out.end();
    });
    out.onClose(() => {
      follower.close();
      unsubscribe();
    });
    follower.start();
    return reply.hijack();
  });
}

/** A boot, or a restore when the body names a snapshot or a template (src/snapshot). */
function createVm(daemon: Daemon, body: CreateVmBody) {
  const { snapshot, template, ...boot } = body;
  // kiln's own prefixes (`kiln.kind`, E2B's `e2b.*`) say what kilnd made: a client cannot claim them.
  if (boot.labels) validateLabels(boot.labels);
  if (snapshot && template) throw new KilnError('KILN_ERR_VALIDATION', 'give "snapshot" or "template", not both');
  if (snapshot || template) {
    const extra = Object.keys(boot).filter((k) => !['name', 'env', 'egress', 'labels', ...(template ? ['vcpus', 'memory_mib'] : [])].includes(k));
    if (extra.length) throw new KilnError('KILN_ERR_VALIDATION', `a restored VM is the snapshot's machine: ${extra.join(', ')} cannot be set`);
  }
  if (snapshot) return daemon.snapshots.restore(snapshot, { name: boot.name, env: boot.env, egress: boot.egress, labels: boot.labels });
  if (template) return daemon.templates.clone(template, { name: boot.name, env: boot.env, egress: boot.egress, labels: boot.labels, vcpus: boot.vcpus, memoryMib: boot.memory_mib });
  return daemon.vms.create(boot);
}

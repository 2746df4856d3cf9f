// Snapshots and templates: /v1/vms/{id}/snapshots, /v1/snapshots, /v1/templates.
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Daemon } from '../../daemon.ts';
import type { SnapshotRecord, TemplateRecord } from '../../store/store.ts';
import { CreateSnapshotBody, CreateTemplateBody, ErrorBody, IdParams, Snapshot, SnapshotList, Template, TemplateList } from '../schemas.ts';

const errors = { 400: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 500: ErrorBody, 502: ErrorBody, 504: ErrorBody };

async function snapshotView(daemon: Daemon, s: SnapshotRecord) {
  const m = s.meta;
  return {
    id: s.id,
    source_vm: s.sourceVmId,
    template: s.templateId,
    memory: m.memory,
    image: { id: m.guest.imageId, digest: m.guest.imageDigest },
    vcpus: m.guest.vcpus,
    memory_mib: m.guest.memoryMib,
    size_bytes: s.sizeBytes,
    compat: { ...m.compat },
    files: m.files,
    clones: await daemon.snapshots.liveClones(s.id),
    created_at: new Date(s.createdAt).toISOString(),
  };
}

function templateView(t: TemplateRecord) {
  return {
    id: t.id, image: t.imageId, vcpus: t.vcpus, memory_mib: t.memoryMib, key: t.key, state: t.state,
    state_reason: t.stateReason, snapshot: t.snapshotId, created_at: new Date(t.createdAt).toISOString(),
  };
}

export function registerSnapshotRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  const snapshots = daemon.snapshots;
  const templates = daemon.templates;

  app.post('/v1/vms/:id/snapshots', {
    schema: {
      summary: 'Snapshot a ready or paused VM (memory, device state, writable layer)',
      description: 'The VM pauses while its state is written; with `resume` (default true) it runs on, else it stays paused. Restore with `POST /v1/vms {"snapshot": id}`.',
      tags: ['snapshots'], params: IdParams, body: CreateSnapshotBody, response: { 201: Snapshot, ...errors },
    },
  }, async (req, reply) => reply.status(201).send(await snapshotView(daemon, await snapshots.create(req.params.id, { resume: req.body?.resume ?? true }))));

  app.get('/v1/snapshots', { schema: { summary: 'List snapshots', tags: ['snapshots'], response: { 200: SnapshotList } } }, async () => ({
    snapshots: await Promise.all((await snapshots.list()).map((s) => snapshotView(daemon, s))),
  }));

  app.get('/v1/snapshots/:id', {
    schema: { summary: 'Get a snapshot', tags: ['snapshots'], params: IdParams, response: { 200: Snapshot, ...errors } },
  }, async (req) => snapshotView(daemon, await snapshots.get(req.params.id)));

  app.delete('/v1/snapshots/:id', {
    schema: {
      summary: 'Delete a snapshot (refused while clones run from it or a template owns it)',
      tags: ['snapshots'], params: IdParams, response: { 204: Type.Null(), ...errors },
    },
  }, async (req, reply) => {
    await snapshots.delete(req.params.id);
    return reply.status(204).send(null);
  });

  app.post('/v1/templates', {
    schema: {
      summary: 'Get or build the template of an image (boot once, snapshot at agent-ready)',
      description: 'Returns the ready template; builds it first (a cold boot) when there is none or the image, kernel, kiln-init or VMM changed.',
      tags: ['templates'], body: CreateTemplateBody, response: { 201: Template, ...errors },
    },
  }, async (req, reply) => reply.status(201).send(templateView(await templates.ensure(req.body.image, { vcpus: req.body.vcpus, memoryMib: req.body.memory_mib }))));

  app.get('/v1/templates', { schema: { summary: 'List templates', tags: ['templates'], response: { 200: TemplateList } } }, async () => ({
    templates: (await templates.list()).map(templateView),
  }));

  app.get('/v1/templates/:id', {
    schema: { summary: 'Get a template', tags: ['templates'], params: IdParams, response: { 200: Template, ...errors } },
  }, async (req) => templateView(await templates.get(req.params.id)));

  app.delete('/v1/templates/:id', {
    schema: { summary: 'Delete a template and its snapshot (refused while clones run)', tags: ['templates'], params: IdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await templates.delete(req.params.id);
    return reply.status(204).send(null);
  });
}

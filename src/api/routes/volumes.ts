import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import fs from 'node:fs/promises';
import { Type } from 'typebox';
import type { Daemon } from '../../daemon.ts';
import type { VolumeRecord } from '../../store/store.ts';
import { CreateVolumeBody, ErrorBody, IdParams, Volume, VolumeList } from '../schemas.ts';

const errors = { 400: ErrorBody, 404: ErrorBody, 409: ErrorBody, 500: ErrorBody, 507: ErrorBody };

async function volumeView(daemon: Daemon, v: VolumeRecord): Promise<Volume> {
  const st = await fs.stat(v.path).catch(() => null);
  const vms = (await daemon.store.listVms()).filter((vm) => vm.volumes.some((a) => a.volumeId === v.id));
  return {
    id: v.id,
    name: v.name,
    size_mib: v.sizeMib,
    allocated_bytes: st ? st.blocks * 512 : 0,
    attached_to: vms.map((vm) => vm.id),
    created_at: new Date(v.createdAt).toISOString(),
  };
}

export function registerVolumeRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();

  app.post('/v1/volumes', {
    schema: { summary: 'Create a persistent volume (sparse ext4)', tags: ['volumes'], body: CreateVolumeBody, response: { 201: Volume, ...errors } },
  }, async (req, reply) => reply.status(201).send(await volumeView(daemon, await daemon.volumes.create(req.body.name, req.body.size_mib))));

  app.get('/v1/volumes', { schema: { summary: 'List volumes', tags: ['volumes'], response: { 200: VolumeList } } }, async () => ({
    volumes: await Promise.all((await daemon.volumes.list()).map((v) => volumeView(daemon, v))),
  }));

  app.get('/v1/volumes/:id', {
    schema: { summary: 'Get a volume by id or name', tags: ['volumes'], params: IdParams, response: { 200: Volume, ...errors } },
  }, async (req) => volumeView(daemon, await daemon.volumes.get(req.params.id)));

  app.delete('/v1/volumes/:id', {
    schema: { summary: 'Delete a volume (refused while a VM has it attached)', tags: ['volumes'], params: IdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await daemon.volumes.delete(req.params.id);
    return reply.status(204).send(null);
  });
}

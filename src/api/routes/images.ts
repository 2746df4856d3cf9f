import { createReadStream } from 'node:fs';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Daemon } from '../../daemon.ts';
import { KilnError } from '../../errors.ts';
import { ErrorBody, GcBody, GcResult, IdParams, Image, ImageList, ImportImageBody, ImportTarQuery, PullImageBody, PullQuery, truthy } from '../schemas.ts';
import { openAllowedDir } from '../../image/host-dir.ts';
import { imageView } from '../views.ts';

const errors = { 400: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 500: ErrorBody, 502: ErrorBody, 507: ErrorBody };
/** Image trees are uploaded as tar; far above BODY_LIMIT, which is for JSON. */
const TAR_LIMIT = 16 * 1024 * 1024 * 1024;

export function registerImageRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();

  app.addContentTypeParser('application/x-tar', (_req, payload, done) => done(null, payload));

  app.get('/v1/images', { schema: { summary: 'List images', tags: ['images'], response: { 200: ImageList } } }, async () => ({
    images: (await daemon.images.list()).map(imageView),
  }));

  app.post('/v1/images', {
    schema: {
      summary: 'Pull an image from a registry and convert it (idempotent; concurrent pulls of a ref coalesce)',
      description: 'Returns 202 with the image in `pulling` (progress: `image.progress` events on /v1/events), '
        + 'or 200 once it is `ready` with `?wait=1` or when it was pulled before. A failed pull removes the record '
        + 'and publishes `image.failed`.',
      tags: ['images'], body: PullImageBody, querystring: PullQuery, response: { 200: Image, 202: Image, ...errors },
    },
  }, async (req, reply) => {
    const { image, done } = await daemon.images.pull(req.body);
    if (image.state === 'ready') return reply.status(200).send(imageView(image));
    if (truthy(req.query.wait)) return reply.status(200).send(imageView(await done));
    return reply.status(202).send(imageView(image));
  });

  app.post('/v1/images/gc', {
    schema: {
      summary: 'Remove image files, staging trees and blobs no image refers to (and, with images: true, images no VM uses)',
      tags: ['images'], body: Type.Optional(GcBody), response: { 200: GcResult, ...errors },
    },
  }, async (req) => daemon.images.gc({ images: req.body?.images ?? false, keep: ['default'] }));

  app.get('/v1/images/:id', {
    schema: { summary: 'Get an image by id or name', tags: ['images'], params: IdParams, response: { 200: Image, ...errors } },
  }, async (req) => imageView(await daemon.images.get(req.params.id)));

  app.get('/v1/images/:id/file', {
    schema: {
      summary: "This node's copy of the image's root filesystem file (cluster nodes fetch images they lack from each other)",
      description: 'Streams the file; `x-kiln-sha256` is the sha256 this node recorded for its copy, which the fetching node '
        + 'verifies the transfer against (as it does against the copy\'s row in the store). 404 when this node holds no copy.',
      tags: ['images'], params: IdParams, response: { 404: ErrorBody, 409: ErrorBody, 500: ErrorBody },
    },
  }, async (req, reply) => {
    const img = await daemon.images.get(req.params.id);
    const copy = img.state === 'ready' ? await daemon.images.localCopy(img.id) : null;
    if (!copy) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `this node holds no copy of image ${img.name}`, { image: img.id });
    return reply
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(copy.sizeBytes))
      .header('x-kiln-sha256', copy.sha256)
      .send(createReadStream(copy.path) as never);
  });

  app.delete('/v1/images/:id', {
    schema: { summary: 'Delete an image (refused while a VM uses it)', tags: ['images'], params: IdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await daemon.images.delete(req.params.id);
    return reply.status(204).send(null);
  });

  app.post('/v1/images/import', {
    schema: {
      summary: 'Import a host directory (under an allowed root) as an image',
      tags: ['images'], body: ImportImageBody, response: { 201: Image, ...errors },
    },
  }, async (req, reply) => {
    const b = req.body;
    if (!b.path) throw new KilnError('KILN_ERR_VALIDATION', 'body: path is required (or upload a tar with Content-Type: application/x-tar)');
    // Read through the opened directory: a swap of the path after the check cannot escape.
    const dir = await openAllowedDir(b.path, daemon.config.allowedRoots);
    try {
      const img = await daemon.images.importDir(b.name, dir.readPath, {
        ...(b.cmd ? { cmd: b.cmd } : {}),
        ...(b.env ? { env: b.env } : {}),
        ...(b.workdir ? { workdir: b.workdir } : {}),
        ...(b.user ? { user: b.user.includes(':') ? b.user : `${b.user}:${b.user}` } : {}),
      });
      return reply.status(201).send(imageView(img));
    } finally {
      await dir.close();
    }
  });

  app.post('/v1/images/upload', {
    bodyLimit: TAR_LIMIT,
    schema: {
      summary: 'Import an image from an uploaded tar of its root filesystem',
      tags: ['images'], querystring: ImportTarQuery, consumes: ['application/x-tar'], response: { 201: Image, ...errors },
    },
  }, async (req, reply) => {
    let cmd: string[] | undefined;
    if (req.query.cmd !== undefined) {
      try {
        cmd = JSON.parse(req.query.cmd);
      } catch {
        /* validated below */
      }
      if (!Array.isArray(cmd) || cmd.length === 0 || !cmd.every((c) => typeof c === 'string')) {
        throw new KilnError('KILN_ERR_VALIDATION', 'querystring: cmd must be a JSON array of strings');
      }
    }
    const img = await daemon.images.importTar(req.query.name, req.body as NodeJS.ReadableStream as never, cmd ? { cmd } : {});
    return reply.status(201).send(imageView(img));
  });
}

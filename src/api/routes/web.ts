// The dashboard: three static files (src/web), served by kilnd itself so there is nothing
// to deploy. They hold no data, so they are served without the API token; the page asks for
// the token and every API call it makes carries it.
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';

const WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

/** URL paths that need no token: the static dashboard files. */
export function isPublicWebPath(url: string): boolean {
  const p = url.split('?')[0]!;
  return p === '/' || p === '/ui' || p === '/ui/' || Object.keys(FILES).some((f) => p === `/ui/${f}`);
}

export async function registerWebRoutes(app: FastifyInstance): Promise<void> {
  const bodies = new Map<string, Buffer>();
  for (const f of Object.keys(FILES)) bodies.set(f, await fs.readFile(path.join(WEB_DIR, f)));
  const send = (file: string) => async (_req: unknown, reply: import('fastify').FastifyReply) =>
    reply.type(FILES[file]!).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff').send(bodies.get(file));
  app.get('/', { schema: { hide: true } }, send('index.html'));
  app.get('/ui', { schema: { hide: true } }, send('index.html'));
  app.get('/ui/', { schema: { hide: true } }, send('index.html'));
  for (const f of Object.keys(FILES)) app.get(`/ui/${f}`, { schema: { hide: true } }, send(f));
}

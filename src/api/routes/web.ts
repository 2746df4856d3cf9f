// The dashboard: static files served by kilnd itself, so there is nothing to build or deploy.
// Its own ES modules come from src/web (tests and anything else there are not served); the
// libraries it uses come from node_modules, where `npm ci` put them (see docs/dashboard.md):
// xterm.js and its fit addon for the console, uPlot for the charts. None of these files hold
// data, so they are served without the API token; the page asks for it and sends it.
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';

const WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
};

/** URL under /ui/vendor/ → [package, file inside it]: the only node_modules files served. */
export const VENDOR: Record<string, [string, string]> = {
  'xterm.mjs': ['@xterm/xterm', 'lib/xterm.mjs'],
  'xterm.css': ['@xterm/xterm', 'css/xterm.css'],
  'addon-fit.mjs': ['@xterm/addon-fit', 'lib/addon-fit.mjs'],
  'uplot.mjs': ['uplot', 'dist/uPlot.esm.js'],
  'uplot.css': ['uplot', 'dist/uPlot.min.css'],
};

/** URL paths served (filled at registration): the public set the request guard lets through. */
const served = new Set<string>();

/** URL paths that need no token: the dashboard's static files. */
export function isPublicWebPath(url: string): boolean {
  const p = url.split('?')[0]!;
  return p === '/' || p === '/ui' || p === '/ui/' || served.has(p);
}

/** Every servable file under src/web, as paths relative to it (test files excluded). */
async function webFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await webFiles(dir, r)));
    else if (TYPES[path.extname(e.name)] && !/\.test\.[jt]s$/.test(e.name)) out.push(r);
  }
  return out;
}

/** A package's directory, found from its resolved entry point (exports may hide package.json). */
function packageDir(pkg: string): string {
  const require = createRequire(import.meta.url);
  let dir = path.dirname(require.resolve(pkg));
  while (path.basename(dir) !== pkg.split('/').pop() || !path.basename(path.dirname(dir)).match(/^(node_modules|@.*)$/)) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`dashboard: cannot find the directory of ${pkg}`);
    dir = up;
  }
  return dir;
}

export async function registerWebRoutes(app: FastifyInstance): Promise<void> {
  const bodies = new Map<string, { type: string; body: Buffer }>();
  for (const rel of await webFiles(WEB_DIR)) {
    bodies.set(`/ui/${rel}`, { type: TYPES[path.extname(rel)]!, body: await fs.readFile(path.join(WEB_DIR, rel)) });
  }
  for (const [name, [pkg, file]] of Object.entries(VENDOR)) {
    bodies.set(`/ui/vendor/${name}`, { type: TYPES[path.extname(name)]!, body: await fs.readFile(path.join(packageDir(pkg), file)) });
  }
  const send = (reply: FastifyReply, url: string) => {
    const f = bodies.get(url)!;
    return reply.type(f.type).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff').send(f.body);
  };
  for (const p of ['/', '/ui', '/ui/']) app.get(p, { schema: { hide: true } }, async (_req, reply) => send(reply, '/ui/index.html'));
  for (const url of bodies.keys()) {
    served.add(url);
    app.get(url, { schema: { hide: true } }, async (_req, reply) => send(reply, url));
  }
}

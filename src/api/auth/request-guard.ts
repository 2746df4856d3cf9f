// Every request passes three checks before any route runs:
//  1. Host names this kilnd (loopback, the listen address, configured names): a DNS-rebinding
//     page reaches us under its own name, and is refused before it can read anything.
//  2. Origin, when a browser sends one, is the origin the request is addressed to: a page on
//     another site cannot POST here (the token alone would stop it too; --no-auth has only this).
//  3. The bearer token, compared in constant time; for WebSocket upgrades also as a
//     subprotocol, since browsers cannot set headers on a WebSocket.
// /healthz and the static dashboard files need no token (they hold no secrets), but pass 1 and 2.
import os from 'node:os';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { KilnError } from '../../errors.ts';
import { WS_TOKEN_PREFIX } from '../../sdk/api-token.ts';
import { tokenMatches } from './token-file.ts';

export interface GuardOptions {
  /** null: --no-auth. */
  token: string | null;
  listenHost: string;
  /** Extra names clients may use in Host (KILN_ALLOWED_HOSTS, --allowed-host). */
  allowedHosts: readonly string[];
  /** Paths served without the token (still Host/Origin-checked). */
  isPublic: (url: string) => boolean;
}

const WILDCARD = new Set(['0.0.0.0', '::', '']);

function bare(host: string): string {
  return host.toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '');
}

/** The host names this kilnd answers to (lower case, IPv6 without brackets). */
export function servedHostNames(listenHost: string, extra: readonly string[]): Set<string> {
  const names = new Set(['localhost', '127.0.0.1', '::1', ...extra.map(bare)]);
  const listen = bare(listenHost);
  if (!WILDCARD.has(listen)) names.add(listen);
  else {
    // Bound to every address: each of the host's addresses is a name clients may use.
    for (const addrs of Object.values(os.networkInterfaces())) for (const a of addrs ?? []) names.add(bare(a.address.split('%')[0]!));
    names.add(bare(os.hostname()));
  }
  return names;
}

/** The hostname of a Host header value (`name`, `name:port`, `[v6]:port`), or null if malformed. */
function hostnameOf(hostHeader: string): string | null {
  try {
    const u = new URL(`http://${hostHeader}`);
    if (u.username || u.password || u.pathname !== '/' || u.search || u.hash) return null;
    return bare(u.hostname);
  } catch {
    return null;
  }
}

function bearer(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (h) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    return m ? m[1]! : null;
  }
  if (req.headers.upgrade?.toLowerCase() === 'websocket') {
    const protos = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    const p = protos.find((x) => x.startsWith(WS_TOKEN_PREFIX));
    if (p) return p.slice(WS_TOKEN_PREFIX.length);
  }
  return null;
}

export function registerRequestGuard(app: FastifyInstance, opts: GuardOptions): void {
  const names = servedHostNames(opts.listenHost, opts.allowedHosts);
  const isLoopbackIp = (h: string) => /^127\.\d+\.\d+\.\d+$/.test(h);
  app.addHook('onRequest', async (req) => {
    const hostHeader = req.headers.host;
    const host = hostHeader ? hostnameOf(hostHeader) : null;
    if (!host || !(names.has(host) || isLoopbackIp(host))) {
      throw new KilnError('KILN_ERR_HOST_NOT_ALLOWED', `Host ${JSON.stringify(hostHeader ?? '')} is not a name this kilnd serves (add it with --allowed-host or KILN_ALLOWED_HOSTS)`);
    }
    const origin = req.headers.origin;
    if (origin !== undefined) {
      let same = false;
      try {
        const o = new URL(origin);
        same = (o.protocol === 'http:' || o.protocol === 'https:') && o.host === new URL(`${o.protocol}//${hostHeader}`).host;
      } catch {
        /* "null" or malformed: not same-origin */
      }
      if (!same) throw new KilnError('KILN_ERR_ORIGIN_NOT_ALLOWED', `Origin ${JSON.stringify(origin)} is not this kilnd's own (cross-site requests are refused)`);
    }
    if (opts.token === null || opts.isPublic(req.url)) return;
    const given = bearer(req);
    if (given === null || !tokenMatches(given, opts.token)) {
      throw new KilnError('KILN_ERR_UNAUTHORIZED', given === null ? 'a bearer token is required (the CLI and SDK read it from <state dir>/api-token; set KILN_API_TOKEN otherwise)' : 'wrong bearer token');
    }
  });
}

// Where kilnd keeps its API token, and how a client on the same host reads it. kilnd writes
// the file (0600) at first start; whoever can read it can use the API, exactly as whoever can
// read the state dir could already read the database.
import fs from 'node:fs';
import path from 'node:path';

export const DEFAULT_STATE_DIR = '/var/lib/kiln';
export const API_TOKEN_FILE = 'api-token';

/** WebSocket subprotocols: browsers cannot set headers on a WebSocket, so the token rides here. */
export const WS_PROTOCOL = 'kiln.v1';
export const WS_TOKEN_PREFIX = 'kiln.token.';

export function apiTokenPath(stateDir: string): string {
  return path.join(stateDir, API_TOKEN_FILE);
}

/**
 * The token kilnd wrote into `stateDir`, or null when there is none yet or this user may not
 * read it (a kilnd run by another user): the request then goes without, and a 401 says so.
 */
export function readApiToken(stateDir: string): string | null {
  try {
    return fs.readFileSync(apiTokenPath(stateDir), 'utf8').trim() || null;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EPERM' || code === 'ENOTDIR') return null;
    throw e;
  }
}

function isLoopbackUrl(url: string): boolean {
  let h: string;
  try {
    h = new URL(url).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return false; // a malformed URL fails at the first request, with its own message
  }
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

/**
 * The token a client uses when none was given: $KILN_API_TOKEN, else the file in the state dir
 * named by the caller or $KILN_STATE_DIR, else (only for a kilnd on this host's loopback, so a
 * local secret never goes to a remote daemon by default) the file in the default state dir.
 */
export function discoverApiToken(url: string, opts: { stateDir?: string; env?: NodeJS.ProcessEnv } = {}): string | undefined {
  const env = opts.env ?? process.env;
  if (env.KILN_API_TOKEN) return env.KILN_API_TOKEN;
  const explicit = opts.stateDir ?? env.KILN_STATE_DIR;
  if (explicit) return readApiToken(path.resolve(explicit)) ?? undefined;
  return isLoopbackUrl(url) ? readApiToken(DEFAULT_STATE_DIR) ?? undefined : undefined;
}

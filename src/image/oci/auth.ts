// Registry authentication: WWW-Authenticate challenges (RFC 7235, as registries send them),
// Docker config.json credentials, and bearer tokens cached per (realm, service, scope, user).
import fs from 'node:fs/promises';
import { KilnError } from '../../errors.ts';
import type { RegistryCredentials } from './types.ts';

export interface AuthChallenge {
  /** Lowercased: 'bearer', 'basic'. */
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parses a WWW-Authenticate value into its challenges. Handles several challenges in one
 * header ('Basic realm="x", Bearer realm="y",scope="a,b"'), quoted strings with escapes and
 * commas inside quotes, and token68 values.
 */
export function parseAuthChallenges(header: string): AuthChallenge[] {
  const out: AuthChallenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => {
    while (i < n && /[\s,]/.test(header[i]!)) i++;
  };
  const readToken = () => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  while (i < n) {
    skipWs();
    const scheme = readToken();
    if (!scheme) {
      i++;
      continue;
    }
    const ch: AuthChallenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(ch);
    // Parameters follow until the next token that is not followed by '=' (a new scheme).
    for (;;) {
      while (i < n && (header[i] === ' ' || header[i] === '\t' || header[i] === ',')) i++;
      const save = i;
      const key = readToken();
      while (i < n && header[i] === ' ') i++;
      if (!key || header[i] !== '=') {
        i = save;
        break;
      }
      i++;
      while (i < n && header[i] === ' ') i++;
      let value = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++;
      } else {
        const start = i;
        while (i < n && header[i] !== ',' && header[i] !== ' ') i++;
        value = header.slice(start, i);
      }
      ch.params[key.toLowerCase()] = value;
    }
  }
  return out;
}

/** The registry key forms found in config.json: 'host', 'https://host/v1/', 'http://host:5000/v2/'. */
function normaliseAuthKey(key: string): string {
  let k = key.trim().replace(/^[a-z]+:\/\//i, '');
  k = k.split('/')[0]!.toLowerCase();
  if (k === 'index.docker.io' || k === 'registry-1.docker.io') k = 'docker.io';
  return k;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string }>;
}

/** Basic credentials for `registry` from a Docker config.json, or undefined when it has none. */
export async function readCredentialsFile(file: string, registry: string): Promise<RegistryCredentials | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KilnError('KILN_ERR_REGISTRY_AUTH', `cannot read registry credentials file ${file}: ${(e as Error).message}`);
  }
  let parsed: DockerConfigFile;
  try {
    parsed = JSON.parse(text) as DockerConfigFile;
  } catch (e) {
    throw new KilnError('KILN_ERR_REGISTRY_AUTH', `registry credentials file ${file} is not valid JSON: ${(e as Error).message}`);
  }
  const want = normaliseAuthKey(registry);
  for (const [key, entry] of Object.entries(parsed.auths ?? {})) {
    if (normaliseAuthKey(key) !== want || !entry) continue;
    if (entry.username !== undefined && entry.password !== undefined) return { username: entry.username, password: entry.password };
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) throw new KilnError('KILN_ERR_REGISTRY_AUTH', `credentials for ${key} in ${file}: 'auth' is not base64("user:password")`);
      return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
  }
  return undefined;
}

export function basicHeader(c: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/** Bearer tokens by realm+service+scope+user; tokens are reused until shortly before they expire. */
export class TokenCache {
  readonly #tokens = new Map<string, CachedToken>();

  static key(realm: string, service: string, scope: string, user: string | undefined): string {
    return JSON.stringify([realm, service, scope, user ?? '']);
  }

  get(key: string, now = Date.now()): string | undefined {
    const t = this.#tokens.get(key);
    if (!t) return undefined;
    if (t.expiresAt <= now) {
      this.#tokens.delete(key);
      return undefined;
    }
    return t.token;
  }

  set(key: string, token: string, expiresInSec: number, now = Date.now()): void {
    // Renew 30 s early (or at half-life for very short tokens) so a token never expires mid-request.
    const margin = Math.min(30, expiresInSec / 2);
    this.#tokens.set(key, { token, expiresAt: now + (expiresInSec - margin) * 1000 });
  }

  delete(key: string): void {
    this.#tokens.delete(key);
  }
}

/** Token service responses use 'token' (Docker) or 'access_token' (OAuth2); 60 s when unstated (spec). */
export function parseTokenResponse(body: unknown): { token: string; expiresIn: number } {
  const b = body as { token?: unknown; access_token?: unknown; expires_in?: unknown };
  const token = typeof b?.token === 'string' ? b.token : typeof b?.access_token === 'string' ? b.access_token : undefined;
  if (!token) throw new KilnError('KILN_ERR_REGISTRY_AUTH', 'the registry token service answered without a token');
  const expiresIn = typeof b.expires_in === 'number' && b.expires_in > 0 ? b.expires_in : 60;
  return { token, expiresIn };
}

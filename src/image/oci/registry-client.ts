// OCI Distribution v2 client for pulls: manifests and blobs of one registry, with the
// challenge-driven auth flow (anonymous → 401 + WWW-Authenticate → bearer token or basic →
// retry), HTTPS by default and plain HTTP only where allowed (loopback, insecure).
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { KilnError } from '../../errors.ts';
import { TokenCache, basicHeader, parseAuthChallenges, parseTokenResponse, type AuthChallenge } from './auth.ts';
import { DigestMismatchError, type BlobSource } from './blob-store.ts';
import { TransportError, httpRequest, readBody, type HttpResponse } from './http.ts';
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from './manifest.ts';
import { registryEndpointHost } from './reference.ts';
import type { RegistryCredentials } from './types.ts';

/** Tokens outlive a single pull: a second pull from the same repository reuses them. */
export const sharedTokenCache = new TokenCache();

export interface RegistryClientOptions {
  registry: string;
  /** Plain HTTP / unverified TLS allowed (loopback registries are always allowed). */
  insecure?: boolean;
  credentials?: RegistryCredentials;
  tokens?: TokenCache;
  signal?: AbortSignal;
  userAgent?: string;
}

export interface FetchedManifest {
  body: Buffer;
  digest: string;
  contentType: string;
}

function hostOnly(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  const colon = registry.lastIndexOf(':');
  return colon >= 0 ? registry.slice(0, colon) : registry;
}

/** Docker treats registries on loopback as insecure by default; so does kiln. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = hostOnly(registry).toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

/** Registry error bodies: {"errors":[{"code":"MANIFEST_UNKNOWN","message":"…"}]}. */
async function errorSummary(res: HttpResponse): Promise<{ codes: string[]; text: string }> {
  const body = await readBody(res, 64 * 1024).catch(() => Buffer.alloc(0));
  try {
    const j = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
    const errs = j.errors ?? [];
    return { codes: errs.map((e) => e.code ?? ''), text: errs.map((e) => `${e.code}: ${e.message}`).join('; ') };
  } catch {
    return { codes: [], text: body.toString('utf8').slice(0, 200).trim() };
  }
}

/**
 * Schemes to try, in order: HTTPS always first; plain HTTP only for loopback registries and
 * ones the request or daemon config marks insecure (as Docker does).
 */
export function schemeCandidates(registry: string, insecure: boolean): ('https' | 'http')[] {
  return insecure || isLoopbackRegistry(registry) ? ['https', 'http'] : ['https'];
}

interface AuthUsed {
  header?: string;
  /** Cache key of the bearer token sent, so a refused token can be dropped. */
  tokenKey?: string;
  fromCache: boolean;
}

function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

export class RegistryClient {
  readonly registry: string;
  readonly #insecure: boolean;
  readonly #credentials?: RegistryCredentials;
  readonly #tokens: TokenCache;
  readonly #signal?: AbortSignal;
  readonly #userAgent: string;
  #base?: URL;
  /** The last challenge per scope; lets later requests authenticate up front. */
  readonly #challenges = new Map<string, AuthChallenge>();

  /** Whose token it is: a token got with other credentials (or anonymously) is never reused. */
  get #identity(): string | undefined {
    const c = this.#credentials;
    return c ? `${c.username}:${createHash('sha256').update(c.password).digest('hex')}` : undefined;
  }

  constructor(opts: RegistryClientOptions) {
    this.registry = opts.registry;
    this.#insecure = opts.insecure === true || isLoopbackRegistry(opts.registry);
    this.#credentials = opts.credentials;
    this.#tokens = opts.tokens ?? sharedTokenCache;
    this.#signal = opts.signal;
    this.#userAgent = opts.userAgent ?? 'kiln';
  }

  /**
   * HTTPS first; for registries allowed to be insecure, plain HTTP when HTTPS does not answer
   * (as Docker does). Pinned for the client's lifetime.
   */
  async #baseUrl(): Promise<URL> {
    if (this.#base) return this.#base;
    const host = registryEndpointHost(this.registry);
    const https = new URL(`https://${host}/`);
    if (!schemeCandidates(this.registry, this.#insecure).includes('http')) return (this.#base = https);
    try {
      const res = await httpRequest(new URL('/v2/', https), { insecureTls: true, signal: this.#signal, idleTimeoutMs: 10_000, headers: { 'user-agent': this.#userAgent } });
      res.body.resume();
      return (this.#base = https);
    } catch (e) {
      if (!(e instanceof TransportError)) throw e;
      return (this.#base = new URL(`http://${host}/`));
    }
  }

  async #authHeader(scope: string, forceRefresh: boolean): Promise<AuthUsed> {
    const ch = this.#challenges.get(scope);
    if (!ch) return { fromCache: false };
    if (ch.scheme === 'basic') return { header: this.#credentials ? basicHeader(this.#credentials) : undefined, fromCache: false };
    const realm = ch.params.realm;
    if (!realm) throw new KilnError('KILN_ERR_REGISTRY_AUTH', `${this.registry} sent a Bearer challenge without a realm`);
    const service = ch.params.service ?? '';
    const key = TokenCache.key(realm, service, scope, this.#identity);
    if (!forceRefresh) {
      const cached = this.#tokens.get(key);
      if (cached) return { header: `Bearer ${cached}`, tokenKey: key, fromCache: true };
    }
    const url = new URL(realm);
    if (url.protocol === 'http:' && !this.#insecure) {
      throw new KilnError('KILN_ERR_REGISTRY_AUTH', `${this.registry}'s token service ${realm} is plain HTTP; refusing to use it for a secure registry`);
    }
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': this.#userAgent, accept: 'application/json' };
    if (this.#credentials) headers.authorization = basicHeader(this.#credentials);
    let res: HttpResponse;
    try {
      res = await httpRequest(url, { headers, insecureTls: this.#insecure, signal: this.#signal, idleTimeoutMs: 30_000 });
    } catch (e) {
      if (e instanceof TransportError) {
        throw new KilnError('KILN_ERR_REGISTRY_UNREACHABLE', `token service ${url.origin} of ${this.registry} is unreachable: ${e.message}`, { realm }, { cause: e });
      }
      throw e;
    }
    if (res.status === 401 || res.status === 403) {
      const { text } = await errorSummary(res);
      throw new KilnError(
        'KILN_ERR_REGISTRY_AUTH',
        `${this.registry}'s token service refused ${this.#credentials ? `the credentials of ${JSON.stringify(this.#credentials.username)}` : 'anonymous access'} for ${scope} (HTTP ${res.status}${text ? `: ${text}` : ''})`,
        { registry: this.registry, scope, status: res.status, user: this.#credentials?.username ?? null },
      );
    }
    if (res.status !== 200) {
      const { text } = await errorSummary(res);
      throw new KilnError('KILN_ERR_REGISTRY_ERROR', `token service ${url.origin} answered HTTP ${res.status}${text ? `: ${text}` : ''}`, { status: res.status, retryable: retryableStatus(res.status) });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse((await readBody(res, 1024 * 1024)).toString('utf8'));
    } catch (e) {
      if (e instanceof TransportError) throw e;
      throw new KilnError('KILN_ERR_REGISTRY_AUTH', `token service ${url.origin} returned invalid JSON`);
    }
    const { token, expiresIn } = parseTokenResponse(parsed);
    this.#tokens.set(key, token, expiresIn);
    return { header: `Bearer ${token}`, tokenKey: key, fromCache: false };
  }

  /**
   * One request with the auth dance: sends the credentials we already know are needed; on a
   * 401 learns the challenge, gets a token (or uses basic) and retries. A cached token the
   * registry refuses (revoked, or got with less access) is dropped and replaced once.
   */
  async #request(path: string, scope: string, headers: Record<string, string>): Promise<HttpResponse> {
    const base = await this.#baseUrl();
    const url = new URL(path, base);
    let forceRefresh = false;
    for (let round = 0; ; round++) {
      const used = await this.#authHeader(scope, forceRefresh);
      const auth = used.header;
      const h: Record<string, string> = { 'user-agent': this.#userAgent, ...headers };
      if (auth) h.authorization = auth;
      const res = await httpRequest(url, { headers: h, insecureTls: this.#insecure, signal: this.#signal });
      if (res.status !== 401) return res;
      const { text } = await errorSummary(res);
      const challenges = parseAuthChallenges(String(res.headers['www-authenticate'] ?? ''));
      const ch = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
      if (used.tokenKey) this.#tokens.delete(used.tokenKey);
      if (!ch || round >= 2 || (round >= 1 && !used.fromCache)) {
        throw new KilnError(
          'KILN_ERR_REGISTRY_AUTH',
          `${this.registry} refused ${auth ? 'kiln\'s credentials' : 'anonymous access'} to ${scope.replace(/^repository:/, '').replace(/:pull$/, '')}${!this.#credentials ? ' (no credentials configured for this registry)' : ''}${text ? `: ${text}` : ''}`,
          { registry: this.registry, scope, status: 401, user: this.#credentials?.username ?? null },
        );
      }
      if (ch.scheme === 'basic' && !this.#credentials) {
        throw new KilnError('KILN_ERR_REGISTRY_AUTH', `${this.registry} requires a username and password (basic auth) and none is configured for it`, {
          registry: this.registry,
          scope,
        });
      }
      this.#challenges.set(scope, ch);
      forceRefresh = used.fromCache;
    }
  }

  async #transport<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof TransportError) {
        throw new KilnError('KILN_ERR_REGISTRY_UNREACHABLE', `registry ${this.registry} unreachable while fetching ${what}: ${e.message}`, {
          registry: this.registry,
          retryable: true,
        }, { cause: e });
      }
      throw e;
    }
  }

  /** Fetches a manifest or index by tag or digest and verifies it against the digest it claims. */
  async getManifest(repository: string, reference: string): Promise<FetchedManifest> {
    const what = `manifest ${repository}:${reference}`;
    return this.#transport(what, async () => {
      const res = await this.#request(`/v2/${repository}/manifests/${reference}`, `repository:${repository}:pull`, { accept: MANIFEST_ACCEPT });
      if (res.status === 404) {
        const { codes, text } = await errorSummary(res);
        const name = `${this.registry}/${repository}${reference.startsWith('sha256:') ? '@' : ':'}${reference}`;
        throw new KilnError('KILN_ERR_MANIFEST_NOT_FOUND', `${name} not found${codes.includes('NAME_UNKNOWN') ? ' (no such repository)' : ''}${text ? `: ${text}` : ''}`, {
          registry: this.registry,
          repository,
          reference,
          registryCodes: codes,
        });
      }
      if (res.status === 403) {
        const { text } = await errorSummary(res);
        throw new KilnError('KILN_ERR_REGISTRY_AUTH', `${this.registry} denied access to ${repository}${text ? `: ${text}` : ''}`, { registry: this.registry, repository });
      }
      if (res.status !== 200) {
        const { text } = await errorSummary(res);
        throw new KilnError('KILN_ERR_REGISTRY_ERROR', `${this.registry} answered HTTP ${res.status} for ${what}${text ? `: ${text}` : ''}`, {
          status: res.status,
          retryable: retryableStatus(res.status),
        });
      }
      let body: Buffer;
      try {
        body = await readBody(res, MAX_MANIFEST_BYTES);
      } catch (e) {
        if (e instanceof RangeError) throw new KilnError('KILN_ERR_REGISTRY_ERROR', `${what} is larger than ${MAX_MANIFEST_BYTES} bytes`);
        throw e;
      }
      const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      const claimed = reference.startsWith('sha256:') ? reference : String(res.headers['docker-content-digest'] ?? '');
      if (claimed.startsWith('sha256:') && claimed !== digest) throw new DigestMismatchError(claimed, digest, 'manifest', { repository });
      return { body, digest, contentType: String(res.headers['content-type'] ?? '') };
    });
  }

  /** Opens a blob, from `offset` with a Range request. Transport failures and 5xx are retryable. */
  async openBlob(repository: string, digest: string, offset = 0): Promise<BlobSource> {
    const headers: Record<string, string> = {};
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const res = await this.#request(`/v2/${repository}/blobs/${digest}`, `repository:${repository}:pull`, headers);
    if (res.status === 200) return { stream: res.body, offset: 0 };
    if (res.status === 206) {
      const m = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''));
      return { stream: res.body, offset: m ? Number(m[1]) : offset };
    }
    if (res.status === 416) {
      // Nothing left to send past `offset`: the partial file is bad; start over.
      res.body.resume();
      return this.openBlob(repository, digest, 0);
    }
    const { text } = await errorSummary(res);
    if (res.status === 404) {
      throw new KilnError('KILN_ERR_REGISTRY_ERROR', `${this.registry}/${repository} lists blob ${digest} but does not have it${text ? `: ${text}` : ''}`, { digest, status: 404 });
    }
    if (res.status === 403) throw new KilnError('KILN_ERR_REGISTRY_AUTH', `${this.registry} denied blob ${digest}${text ? `: ${text}` : ''}`, { digest });
    if (retryableStatus(res.status)) throw new TransportError(`${this.registry} answered HTTP ${res.status} for blob ${digest}${text ? `: ${text}` : ''}`);
    throw new KilnError('KILN_ERR_REGISTRY_ERROR', `${this.registry} answered HTTP ${res.status} for blob ${digest}${text ? `: ${text}` : ''}`, { digest, status: res.status });
  }
}

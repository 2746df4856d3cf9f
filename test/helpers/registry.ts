// A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1 with
// a throwaway storage dir, optionally with token auth (a small token service in this process
// signing RS256 JWTs with a certificate made for the run), plus an HTTP front proxy that can
// demand basic auth, count requests, and cut a blob download mid-body.
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate, createPrivateKey, randomBytes, sign, type KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/process.ts';
import { freePort } from './ports.ts';
import { until } from './until.ts';

export interface TokenAuthOptions {
  /** username → password accepted at the token endpoint. */
  users: Record<string, string>;
  /** Grant pull to anonymous token requests (Docker Hub style public repos). */
  anonymousPull?: boolean;
}

export interface TokenRequestLog {
  user: string | null;
  scope: string;
  granted: string[];
}

export interface TestRegistry {
  /** 'http://127.0.0.1:PORT' ('https://…' with tls: a self-signed certificate for 127.0.0.1) */
  url: string;
  /** '127.0.0.1:PORT' — the registry part of image references. */
  host: string;
  storageDir: string;
  /** Set when started with token auth. */
  token?: { realm: string; service: string; requests: TokenRequestLog[] };
  /** Path of a blob's bytes in the registry's storage (tests corrupt them). */
  blobDataPath(digest: string): string;
  output(): string;
  stop(): Promise<void>;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

function signJwt(key: KeyObject, certDerB64: string, claims: Record<string, unknown>): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [certDerB64] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(sign('sha256', Buffer.from(input), key))}`;
}

function parseBasic(h: string | undefined): { user: string; password: string } | null {
  if (!h?.startsWith('Basic ')) return null;
  const s = Buffer.from(h.slice(6), 'base64').toString('utf8');
  const i = s.indexOf(':');
  return i < 0 ? null : { user: s.slice(0, i), password: s.slice(i + 1) };
}

async function startTokenServer(dir: string, opts: TokenAuthOptions, service: string, issuer: string) {
  const keyFile = path.join(dir, 'token.key');
  const certFile = path.join(dir, 'token.crt');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=kiln-test-token-issuer']);
  const key = createPrivateKey(await fs.readFile(keyFile));
  const certDer = new X509Certificate(await fs.readFile(certFile)).raw.toString('base64');
  const requests: TokenRequestLog[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    const basic = parseBasic(req.headers.authorization);
    if (basic && opts.users[basic.user] !== basic.password) {
      requests.push({ user: basic.user, scope: url.searchParams.getAll('scope').join(' '), granted: [] });
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'incorrect username or password' }));
      return;
    }
    const access: { type: string; name: string; actions: string[] }[] = [];
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    for (const s of scopes) {
      const [type, ...rest] = s.split(':');
      const actions = rest.pop()!.split(',');
      const name = rest.join(':');
      const allowed = actions.filter((a) => (basic ? ['pull', 'push', '*'].includes(a) : a === 'pull' && opts.anonymousPull));
      access.push({ type: type!, name, actions: allowed });
    }
    requests.push({ user: basic?.user ?? null, scope: scopes.join(' '), granted: access.flatMap((a) => a.actions.map((x) => `${a.name}:${x}`)) });
    const now = Math.floor(Date.now() / 1000);
    const token = signJwt(key, certDer, {
      iss: issuer,
      sub: basic?.user ?? '',
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    });
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date(now * 1000).toISOString() }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return { server, certFile, realm: `http://127.0.0.1:${port}/token`, requests };
}

/** Readiness probe that also accepts the self-signed certificate of a TLS test registry. */
function probe(url: string): Promise<number> {
  return new Promise((resolve) => {
    const mod = url.startsWith('https:') ? https : http;
    // A registry that accepts and never answers counts as not ready (the caller's deadline then holds).
    const req = mod.get(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

export async function startRegistry(opts: { tokenAuth?: TokenAuthOptions; tls?: boolean } = {}): Promise<TestRegistry> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-registry-'));
  const storageDir = path.join(dir, 'storage');
  await fs.mkdir(storageDir);
  const service = 'kiln-test-registry';
  const issuer = 'kiln-test-issuer';
  const token = opts.tokenAuth ? await startTokenServer(dir, opts.tokenAuth, service, issuer) : undefined;
  const tls = opts.tls ? { certificate: path.join(dir, 'tls.crt'), key: path.join(dir, 'tls.key') } : undefined;
  if (tls) {
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', tls.key, '-out', tls.certificate, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
  }
  let proc: ChildProcess | undefined;
  let out = '';
  const cleanup = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    }
    if (token) await new Promise((r) => token.server.close(r));
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    for (let tries = 0; ; tries++) {
      const port = await freePort();
      const config = {
        version: 0.1,
        log: { level: 'warn', accesslog: { disabled: true } },
        storage: {
          filesystem: { rootdirectory: storageDir },
          delete: { enabled: true },
          maintenance: { uploadpurging: { enabled: false } },
        },
        http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString('hex'), ...(tls ? { tls } : {}) },
        ...(token ? { auth: { token: { realm: token.realm, service, issuer, rootcertbundle: token.certFile } } } : {}),
      };
      // The registry reads YAML; JSON is YAML.
      const configFile = path.join(dir, 'config.yml');
      await fs.writeFile(configFile, JSON.stringify(config, null, 2));
      out = '';
      proc = spawn('docker-registry', ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
      proc.stdout!.on('data', (b) => (out += b));
      proc.stderr!.on('data', (b) => (out += b));
      const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
      const exited = new Promise<'exit'>((r) => proc!.once('exit', () => r('exit')));
      const ready = until(
        `docker-registry answering on ${url}`,
        async () => {
          if (proc!.exitCode !== null) return 'exit' as const;
          const st = await probe(`${url}/v2/`);
          return (st === 200 || st === 401) && ('ready' as const);
        },
        30_000,
        50,
      );
      const r = await Promise.race([ready, exited]);
      if (r === 'ready') {
        return {
          url,
          host: `127.0.0.1:${port}`,
          storageDir,
          ...(token ? { token: { realm: token.realm, service, requests: token.requests } } : {}),
          blobDataPath: (digest: string) => {
            const hex = digest.replace(/^sha256:/, '');
            return path.join(storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
          },
          output: () => out,
          stop: cleanup,
        };
      }
      // Lost the port race (or a real failure): a few tries, then report what it said.
      if (tries >= 3) throw new Error(`docker-registry did not start:\n${out}`);
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
}

export interface ProxyRequest {
  method: string;
  path: string;
  status: number;
  range?: string;
  /** Set when the proxy cut this response on purpose. */
  cutAfter?: number;
}

export interface RegistryProxyOptions {
  /** Demand HTTP basic auth (as an nginx in front of a registry would). */
  basicAuth?: Record<string, string>;
  /** Cut the connection after `afterBytes` body bytes, `times` times, in blob GETs (of `digest`, if set) that are longer. */
  dropBlob?: { afterBytes: number; times: number; digest?: string };
  /** Answer the next `times` manifest GETs with this status (a registry having a bad moment). */
  failManifests?: { times: number; status: number };
}

export interface RegistryProxy {
  url: string;
  host: string;
  requests: ProxyRequest[];
  /** GETs of blobs (not manifests) that reached the registry, in order. */
  blobGets(): ProxyRequest[];
  setDropBlob(d: RegistryProxyOptions['dropBlob']): void;
  stop(): Promise<void>;
}

/** An HTTP proxy in front of a registry (on another loopback port, so it is another registry host). */
export async function startRegistryProxy(upstream: string, opts: RegistryProxyOptions = {}): Promise<RegistryProxy> {
  const up = new URL(upstream);
  const requests: ProxyRequest[] = [];
  let drop = opts.dropBlob ? { ...opts.dropBlob } : undefined;
  const failManifests = opts.failManifests ? { ...opts.failManifests } : undefined;
  const server = http.createServer((req, res) => {
    const entry: ProxyRequest = { method: req.method ?? 'GET', path: req.url ?? '/', status: 0, ...(req.headers.range ? { range: String(req.headers.range) } : {}) };
    requests.push(entry);
    if (opts.basicAuth) {
      const b = parseBasic(req.headers.authorization);
      if (!b || opts.basicAuth[b.user] !== b.password) {
        entry.status = 401;
        res.writeHead(401, { 'www-authenticate': 'Basic realm="kiln-test"', 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
        return;
      }
    }
    if (failManifests && failManifests.times > 0 && req.method === 'GET' && req.url?.includes('/manifests/')) {
      failManifests.times--;
      entry.status = failManifests.status;
      res.writeHead(failManifests.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'injected by the test proxy' }] }));
      return;
    }
    const headers = { ...req.headers, host: up.host };
    if (opts.basicAuth) delete headers.authorization;
    const upReq = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers }, (upRes) => {
      entry.status = upRes.statusCode ?? 0;
      const isBlobGet = req.method === 'GET' && /\/blobs\/sha256:[a-f0-9]{64}$/.test(req.url ?? '');
      const cut = drop && drop.times > 0 && isBlobGet && (!drop.digest || req.url!.endsWith(drop.digest)) && (upRes.statusCode === 200 || upRes.statusCode === 206) ? drop.afterBytes : undefined;
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      if (cut === undefined) {
        upRes.pipe(res);
        return;
      }
      let sent = 0;
      upRes.on('data', (chunk: Buffer) => {
        if (sent >= cut) return;
        const part = chunk.subarray(0, cut - sent);
        sent += part.length;
        res.write(part);
        if (sent >= cut) {
          drop!.times--;
          entry.cutAfter = cut;
          upRes.destroy();
          // The written bytes reach the client, then the connection ends without the rest.
          res.socket?.end(() => res.socket?.destroy());
        }
      });
      // Blobs smaller than the cut point go through whole.
      upRes.on('end', () => {
        if (sent < cut) res.end();
      });
    });
    upReq.on('error', () => {
      entry.status = 502;
      res.destroy();
    });
    req.pipe(upReq);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    blobGets: () => requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/')),
    setDropBlob: (d) => {
      drop = d ? { ...d } : undefined;
    },
    stop: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

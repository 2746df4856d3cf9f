// The typed kiln client. The CLI is built on it and the tests drive the daemon through it,
// so what users script against is what kiln itself exercises.
import type { Readable } from 'node:stream';
import WebSocket from 'ws';
import { apiTokenPath, discoverApiToken, readApiToken } from './api-token.ts';
import type { CreateFunctionBody, FunctionList, FunctionView, InvocationView, UpdateFunctionBody } from '../api/function-schemas.ts';
import type { Static } from 'typebox';
import type { Container, ContainerStats, CreateContainerBody, CreateVmBody, GcResult, Health, Image, PullImageBody, Snapshot as SnapshotSchema, Template as TemplateSchema, Vm, Volume } from '../api/schemas.ts';

export type Snapshot = Static<typeof SnapshotSchema>;
export type Template = Static<typeof TemplateSchema>;
export type { Container, ContainerStats, CreateContainerBody, CreateVmBody, GcResult, Health, Image, PullImageBody, Vm, Volume };
export type { CreateFunctionBody, FunctionList, FunctionView, InvocationView, UpdateFunctionBody };

/** One piece of a container's output, or (following) how it ended. */
export type ContainerLogItem =
  | { ts: string; stream: 'stdout' | 'stderr'; text: string; partial: boolean }
  | { end: { state: string; exit_code: number | null; removed: boolean } };

/** An invocation's answer with what kilnd reported about it (x-kiln-* headers). */
export interface InvokeResult<T = unknown> {
  result: T;
  invocation: string;
  cold: boolean;
  source: string | null;
  durationMs: number;
  guestMs: number | null;
}

export interface KilnClientOptions {
  /** Default: $KILN_API or http://127.0.0.1:18080 */
  url?: string;
  /**
   * Default: $KILN_API_TOKEN, else the token kilnd wrote into `stateDir` (or $KILN_STATE_DIR),
   * else, for a kilnd on loopback, the one in /var/lib/kiln.
   */
  token?: string;
  /** The kilnd state dir to read the token from (<stateDir>/api-token). */
  stateDir?: string;
}

export interface KilnEvent {
  seq: number;
  ts: string;
  type: string;
  vm: string | null;
  [k: string]: unknown;
}

/** An API error: `code` is stable (see the error table in docs/api.md), the message is for humans. */
export class KilnApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'KilnApiError';
  }
}

type Query = Record<string, string | number | boolean | readonly string[] | undefined>;

export interface ExecOptions {
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** `uid` or `uid:gid` */
  user?: string;
  stdin?: Buffer | string;
  timeoutMs?: number;
}

export interface ExecExit {
  exit_code: number | null;
  signal: number | null;
  timed_out: boolean;
}

export interface ExecResult extends ExecExit {
  stdout: string;
  stderr: string;
  truncated: boolean;
}

export type ExecStreamItem = { stream: 'stdout' | 'stderr'; data: Buffer } | { exit: ExecExit };

function execBody(o: ExecOptions): Record<string, unknown> {
  const stdin = o.stdin === undefined ? undefined : Buffer.isBuffer(o.stdin) ? o.stdin.toString('base64') : Buffer.from(o.stdin).toString('base64');
  return { cmd: o.cmd, env: o.env, cwd: o.cwd, user: o.user, stdin, stdin_base64: stdin === undefined ? undefined : true, timeout_ms: o.timeoutMs };
}

export class KilnClient {
  readonly url: string;
  private readonly token: string | undefined;

  constructor(opts: KilnClientOptions = {}) {
    this.url = (opts.url ?? process.env.KILN_API ?? 'http://127.0.0.1:18080').replace(/\/$/, '');
    this.token = opts.token ?? discoverApiToken(this.url, { stateDir: opts.stateDir });
  }

  /** A client with the token of the kilnd whose state dir this is; throws if it cannot be read. */
  static fromStateDir(stateDir: string, opts: Omit<KilnClientOptions, 'token' | 'stateDir'> = {}): KilnClient {
    const token = readApiToken(stateDir);
    if (!token) throw new Error(`no readable API token in ${apiTokenPath(stateDir)} (has kilnd started there, and may this user read it?)`);
    return new KilnClient({ ...opts, token });
  }

  private href(path: string, query?: Query): string {
    const u = new URL(this.url + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (Array.isArray(v)) for (const x of v) u.searchParams.append(k, String(x));
      else if (v !== undefined) u.searchParams.set(k, String(v));
    }
    return u.toString();
  }

  async request(method: string, path: string, opts: { body?: unknown; query?: Query; raw?: BodyInit; contentType?: string; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let body: BodyInit | undefined;
    if (opts.raw !== undefined) {
      body = opts.raw;
      headers['content-type'] = opts.contentType ?? 'application/octet-stream';
    } else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] = 'application/json';
    }
    const res = await fetch(this.href(path, opts.query), {
      method,
      headers,
      body,
      signal: opts.signal,
      ...(opts.raw !== undefined ? { duplex: 'half' } : {}),
    } as RequestInit);
    if (!res.ok) {
      const text = await res.text();
      let parsed: { code?: string; message?: string; details?: unknown } = {};
      try {
        parsed = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      throw new KilnApiError(res.status, parsed.code ?? `HTTP_${res.status}`, parsed.message ?? text, parsed.details);
    }
    return res;
  }

  private async json<T>(method: string, path: string, opts: Parameters<KilnClient['request']>[2] = {}): Promise<T> {
    const res = await this.request(method, path, opts);
    return (res.status === 204 ? undefined : await res.json()) as T;
  }

  health() {
    return this.json<Health>('GET', '/healthz');
  }

  // VMs
  createVm(body: CreateVmBody = {}, opts: { wait?: boolean; timeoutMs?: number } = {}): Promise<Vm> {
    return this.json('POST', '/v1/vms', { body, query: { wait: opts.wait ? 1 : undefined, timeout_ms: opts.timeoutMs } });
  }
  /** `label`: KEY or KEY=VALUE, all must match; `kind`: sandbox, function, container, … */
  async listVms(filter: { label?: string[]; kind?: string } = {}): Promise<Vm[]> {
    return (await this.json<{ vms: Vm[] }>('GET', '/v1/vms', { query: { label: filter.label, kind: filter.kind } })).vms;
  }
  getVm(id: string): Promise<Vm> {
    return this.json('GET', `/v1/vms/${encodeURIComponent(id)}`);
  }
  deleteVm(id: string): Promise<void> {
    return this.json('DELETE', `/v1/vms/${encodeURIComponent(id)}`);
  }
  stopVm(id: string, opts: { graceMs?: number } = {}): Promise<Vm> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/stop`, { query: { grace_ms: opts.graceMs } });
  }
  startVm(id: string, opts: { wait?: boolean; timeoutMs?: number } = {}): Promise<Vm> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/start`, { query: { wait: opts.wait ? 1 : undefined, timeout_ms: opts.timeoutMs } });
  }
  /** Grows a stopped classic VM's disk. */
  resizeVmDisk(id: string, sizeGib: number): Promise<Vm> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/disk/resize`, { body: { size_gib: sizeGib } });
  }
  /**
   * Opens the VM's interactive serial console (a WebSocket: binary frames, guest output in,
   * keystrokes out). Resolves once connected; a refusal rejects with the API's KilnApiError.
   */
  async console(id: string): Promise<WebSocket> {
    const u = new URL(`${this.url}/v1/vms/${encodeURIComponent(id)}/console`);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(u, { headers: this.token ? { authorization: `Bearer ${this.token}` } : {} });
    return new Promise<WebSocket>((resolve, reject) => {
      ws.once('open', () => {
        ws.off('error', reject);
        resolve(ws);
      });
      ws.once('unexpected-response', (_req, res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let parsed: { code?: string; message?: string; details?: unknown } = {};
          try {
            parsed = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          reject(new KilnApiError(res.statusCode ?? 0, parsed.code ?? `HTTP_${res.statusCode}`, parsed.message ?? text, parsed.details));
        });
      });
      ws.once('error', reject);
    });
  }
  pauseVm(id: string): Promise<Vm> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/pause`);
  }
  resumeVm(id: string): Promise<Vm> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/resume`);
  }
  async logs(id: string): Promise<string> {
    return (await this.request('GET', `/v1/vms/${encodeURIComponent(id)}/logs`)).text();
  }
  /** Streams console output (backlog first) until `signal` aborts or the VM is deleted. */
  async *followLogs(id: string, signal?: AbortSignal): AsyncGenerator<string> {
    const res = await this.request('GET', `/v1/vms/${encodeURIComponent(id)}/logs`, { query: { follow: 1 }, signal });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) yield decoder.decode(chunk, { stream: true });
    } catch (e) {
      if ((e as Error).name !== 'AbortError') throw e;
    }
  }

  // Guest agent: exec and files
  /** Runs a command and returns its result (output capped at 16 MiB per stream). */
  exec(id: string, body: ExecOptions): Promise<ExecResult> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(id)}/exec`, { body: execBody(body) });
  }

  /**
   * Runs a command, yielding its output as it arrives; the last item is the exit. Aborting
   * `signal` disconnects, and the guest kills the process group.
   */
  async *execStream(id: string, body: ExecOptions, signal?: AbortSignal): AsyncGenerator<ExecStreamItem> {
    const res = await this.request('POST', `/v1/vms/${encodeURIComponent(id)}/exec`, { body: execBody(body), query: { stream: 1 }, signal });
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as { stdout?: string; stderr?: string; exit?: ExecExit; error?: { code: string; message: string } };
        buf = buf.slice(nl + 1);
        if (line.stdout !== undefined) yield { stream: 'stdout', data: Buffer.from(line.stdout, 'base64') };
        else if (line.stderr !== undefined) yield { stream: 'stderr', data: Buffer.from(line.stderr, 'base64') };
        else if (line.exit) yield { exit: line.exit };
        else if (line.error) throw new KilnApiError(502, line.error.code, line.error.message);
      }
    }
  }

  /** Writes a file in the VM (atomic replace). */
  putFile(id: string, path: string, data: BodyInit, opts: { mode?: number; mkdirs?: boolean } = {}): Promise<{ bytes: number }> {
    return this.json('PUT', `/v1/vms/${encodeURIComponent(id)}/files`, {
      raw: data,
      query: { path, mode: opts.mode === undefined ? undefined : opts.mode.toString(8).padStart(4, '0'), mkdirs: opts.mkdirs ? 1 : undefined },
    });
  }

  /** Reads a file from the VM as a stream of bytes. */
  async getFile(id: string, path: string, signal?: AbortSignal): Promise<{ size: number; mode: number; body: AsyncIterable<Uint8Array> }> {
    const res = await this.request('GET', `/v1/vms/${encodeURIComponent(id)}/files`, { query: { path }, signal });
    return {
      size: Number(res.headers.get('content-length') ?? 0),
      mode: parseInt(res.headers.get('x-kiln-file-mode') ?? '644', 8),
      body: res.body as unknown as AsyncIterable<Uint8Array>,
    };
  }

  // Containers
  createContainer(body: CreateContainerBody, opts: { wait?: boolean; timeoutMs?: number } = {}): Promise<Container> {
    return this.json('POST', '/v1/containers', { body, query: { wait: opts.wait ? 1 : undefined, timeout_ms: opts.timeoutMs } });
  }
  async listContainers(opts: { all?: boolean } = {}): Promise<Container[]> {
    return (await this.json<{ containers: Container[] }>('GET', '/v1/containers', { query: { all: opts.all ? 1 : undefined } })).containers;
  }
  getContainer(id: string): Promise<Container> {
    return this.json('GET', `/v1/containers/${encodeURIComponent(id)}`);
  }
  removeContainer(id: string, opts: { force?: boolean } = {}): Promise<void> {
    return this.json('DELETE', `/v1/containers/${encodeURIComponent(id)}`, { query: { force: opts.force ? 1 : undefined } });
  }
  /** SIGTERM, then SIGKILL after `graceMs` (the daemon's default if absent). */
  stopContainer(id: string, opts: { graceMs?: number } = {}): Promise<Container> {
    return this.json('POST', `/v1/containers/${encodeURIComponent(id)}/stop`, { query: { grace_ms: opts.graceMs } });
  }
  startContainer(id: string, opts: { wait?: boolean } = {}): Promise<Container> {
    return this.json('POST', `/v1/containers/${encodeURIComponent(id)}/start`, { query: { wait: opts.wait ? 1 : undefined } });
  }
  pauseContainer(id: string): Promise<Container> {
    return this.json('POST', `/v1/containers/${encodeURIComponent(id)}/pause`);
  }
  resumeContainer(id: string): Promise<Container> {
    return this.json('POST', `/v1/containers/${encodeURIComponent(id)}/resume`);
  }
  containerStats(id: string, opts: { intervalMs?: number } = {}): Promise<ContainerStats> {
    return this.json('GET', `/v1/containers/${encodeURIComponent(id)}/stats`, { query: { interval_ms: opts.intervalMs } });
  }
  /** The retained output, rendered as text (`timestamps`: RFC 3339 per line). */
  async containerLogs(id: string, opts: { timestamps?: boolean; tail?: number } = {}): Promise<string> {
    return (await this.request('GET', `/v1/containers/${encodeURIComponent(id)}/logs`, { query: { timestamps: opts.timestamps ? 1 : undefined, tail: opts.tail } })).text();
  }
  /**
   * Output pieces as they arrive (retained ones first); with `follow`, until the container
   * exits for good, the last item then being its end (state, exit code).
   */
  async *containerLogStream(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal } = {}): AsyncGenerator<ContainerLogItem> {
    const res = await this.request('GET', `/v1/containers/${encodeURIComponent(id)}/logs`, {
      query: { format: 'ndjson', follow: opts.follow ? 1 : undefined, tail: opts.tail }, signal: opts.signal,
    });
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line) yield JSON.parse(line) as ContainerLogItem;
        }
      }
    } catch (e) {
      if ((e as Error).name !== 'AbortError') throw e;
    }
  }
  /** Runs a command in a container (its VM's agent). */
  execContainer(id: string, body: ExecOptions): Promise<ExecResult> {
    return this.json('POST', `/v1/containers/${encodeURIComponent(id)}/exec`, { body: execBody(body) });
  }

  // Images
  async listImages(): Promise<Image[]> {
    return (await this.json<{ images: Image[] }>('GET', '/v1/images')).images;
  }
  getImage(id: string): Promise<Image> {
    return this.json('GET', `/v1/images/${encodeURIComponent(id)}`);
  }
  deleteImage(id: string): Promise<void> {
    return this.json('DELETE', `/v1/images/${encodeURIComponent(id)}`);
  }
  importImagePath(body: { name: string; path: string; cmd?: string[]; env?: Record<string, string>; workdir?: string; user?: string }): Promise<Image> {
    return this.json('POST', '/v1/images/import', { body });
  }
  /** Uploads a tar stream of a root filesystem. */
  uploadImage(name: string, tar: Readable, opts: { cmd?: string[] } = {}): Promise<Image> {
    return this.json('POST', '/v1/images/upload', {
      query: { name, cmd: opts.cmd ? JSON.stringify(opts.cmd) : undefined },
      raw: tar as unknown as BodyInit,
      contentType: 'application/x-tar',
    });
  }

  /** Pulls and converts a registry image; `wait` returns once it is ready (or failed). */
  pullImage(body: PullImageBody, opts: { wait?: boolean } = {}): Promise<Image> {
    return this.json('POST', '/v1/images', { body, query: { wait: opts.wait ? 1 : undefined } });
  }
  gcImages(opts: { images?: boolean } = {}): Promise<GcResult> {
    return this.json('POST', '/v1/images/gc', { body: opts });
  }

  // Volumes
  createVolume(name: string, sizeMib: number): Promise<Volume> {
    return this.json('POST', '/v1/volumes', { body: { name, size_mib: sizeMib } });
  }
  async listVolumes(): Promise<Volume[]> {
    return (await this.json<{ volumes: Volume[] }>('GET', '/v1/volumes')).volumes;
  }
  getVolume(id: string): Promise<Volume> {
    return this.json('GET', `/v1/volumes/${encodeURIComponent(id)}`);
  }
  deleteVolume(id: string): Promise<void> {
    return this.json('DELETE', `/v1/volumes/${encodeURIComponent(id)}`);
  }

  // Snapshots and templates
  /** `resume` (default true): the VM runs on after the snapshot; false leaves it paused. */
  createSnapshot(vmId: string, opts: { resume?: boolean } = {}): Promise<Snapshot> {
    return this.json('POST', `/v1/vms/${encodeURIComponent(vmId)}/snapshots`, { body: opts.resume === undefined ? {} : { resume: opts.resume } });
  }
  async listSnapshots(): Promise<Snapshot[]> {
    return (await this.json<{ snapshots: Snapshot[] }>('GET', '/v1/snapshots')).snapshots;
  }
  getSnapshot(id: string): Promise<Snapshot> {
    return this.json('GET', `/v1/snapshots/${encodeURIComponent(id)}`);
  }
  deleteSnapshot(id: string): Promise<void> {
    return this.json('DELETE', `/v1/snapshots/${encodeURIComponent(id)}`);
  }
  createTemplate(image: string, opts: { vcpus?: number; memoryMib?: number } = {}): Promise<Template> {
    return this.json('POST', '/v1/templates', { body: { image, vcpus: opts.vcpus, memory_mib: opts.memoryMib } });
  }
  async listTemplates(): Promise<Template[]> {
    return (await this.json<{ templates: Template[] }>('GET', '/v1/templates')).templates;
  }
  getTemplate(id: string): Promise<Template> {
    return this.json('GET', `/v1/templates/${encodeURIComponent(id)}`);
  }
  deleteTemplate(id: string): Promise<void> {
    return this.json('DELETE', `/v1/templates/${encodeURIComponent(id)}`);
  }

  // Events
  /** Server-sent events, parsed. */
  async *events(opts: { vm?: string; since?: number; signal?: AbortSignal } = {}): AsyncGenerator<KilnEvent> {
    yield* await this.subscribe(opts);
  }

  /**
   * Like events(), but resolves only once the daemon has subscribed this stream: events
   * published after this returns are never missed (e.g. a pull's progress after its POST).
   */
  async subscribe(opts: { vm?: string; since?: number; signal?: AbortSignal } = {}): Promise<AsyncGenerator<KilnEvent>> {
    const res = await this.request('GET', '/v1/events', { query: { vm: opts.vm, since: opts.since }, signal: opts.signal });
    return (async function* parse(): AsyncGenerator<KilnEvent> {
      const decoder = new TextDecoder();
      let buf = '';
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buf += decoder.decode(chunk, { stream: true });
          let sep: number;
          while ((sep = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, sep);
            buf = buf.slice(sep + 2);
            const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
            if (data) yield JSON.parse(data) as KilnEvent;
          }
        }
      } catch (e) {
        if ((e as Error).name !== 'AbortError') throw e;
      }
    })();
  }

  // Functions
  createFunction(body: CreateFunctionBody): Promise<FunctionView> {
    return this.json('POST', '/v1/functions', { body });
  }
  updateFunction(name: string, body: UpdateFunctionBody): Promise<FunctionView> {
    return this.json('PUT', `/v1/functions/${encodeURIComponent(name)}`, { body });
  }
  listFunctions(): Promise<FunctionList> {
    return this.json('GET', '/v1/functions');
  }
  getFunction(name: string): Promise<FunctionView> {
    return this.json('GET', `/v1/functions/${encodeURIComponent(name)}`);
  }
  deleteFunction(name: string): Promise<void> {
    return this.json('DELETE', `/v1/functions/${encodeURIComponent(name)}`);
  }
  /** Invokes with `event` as the body; a function error throws KilnApiError (details: type, message, stack, logs). */
  async invoke<T = unknown>(name: string, event: unknown = null, opts: { signal?: AbortSignal } = {}): Promise<InvokeResult<T>> {
    const res = await this.request('POST', `/v1/functions/${encodeURIComponent(name)}/invoke`, { body: event, signal: opts.signal });
    const h = (k: string) => res.headers.get(k);
    return {
      result: (await res.json()) as T,
      invocation: h('x-kiln-invocation') ?? '',
      cold: h('x-kiln-cold') === 'true',
      source: h('x-kiln-source') || null,
      durationMs: Number(h('x-kiln-duration-ms')),
      guestMs: h('x-kiln-guest-ms') ? Number(h('x-kiln-guest-ms')) : null,
    };
  }
  async invocations(name: string, limit?: number): Promise<InvocationView[]> {
    return (await this.json<{ invocations: InvocationView[] }>('GET', `/v1/functions/${encodeURIComponent(name)}/invocations`, { query: { limit } })).invocations;
  }
  async functionLogs(name: string, limit?: number): Promise<string> {
    return (await this.request('GET', `/v1/functions/${encodeURIComponent(name)}/logs`, { query: { limit } })).text();
  }
}

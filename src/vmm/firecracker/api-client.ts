// Firecracker's REST API: HTTP/1.1 over its Unix socket. Bodies are always sent with an
// explicit Content-Length (Firecracker's HTTP server does not take chunked bodies), GETs
// never carry a body (it refuses them), and every non-2xx answer becomes a KilnError that
// carries Firecracker's own `fault_message`.
import http from 'node:http';
import { KilnError } from '../../errors.ts';
import type * as T from './api-types.ts';

export type HttpMethod = 'GET' | 'PUT' | 'PATCH';

export interface ApiRequest {
  method: HttpMethod;
  path: string;
  body?: unknown;
  signal?: AbortSignal;
  timeoutMs: number;
}

export interface ApiResponse {
  status: number;
  body: string;
}

/** Sends one request to the API socket. Injectable so the layer above can be unit-tested. */
export type ApiTransport = (socketPath: string, req: ApiRequest) => Promise<ApiResponse>;

export const httpOverUnixSocket: ApiTransport = (socketPath, req) =>
  new Promise<ApiResponse>((resolve, reject) => {
    const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
    const headers: http.OutgoingHttpHeaders = { Accept: 'application/json' };
    if (payload) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    const r = http.request({ socketPath, method: req.method, path: req.path, headers, agent: false, signal: req.signal });
    const timer = setTimeout(() => r.destroy(new Error(`no answer within ${req.timeoutMs} ms`)), req.timeoutMs);
    r.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    r.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    r.end(payload);
  });

export interface ApiClientOptions {
  transport?: ApiTransport;
  /** Per-request limit (default 10 s); snapshot calls get `slowTimeoutMs` (default 120 s). */
  timeoutMs?: number;
  slowTimeoutMs?: number;
}

function faultOf(body: string): string {
  try {
    const parsed = JSON.parse(body) as T.ApiErrorBody;
    if (typeof parsed.fault_message === 'string') return parsed.fault_message;
  } catch {
    // not JSON: report the raw text
  }
  return body.trim() || '(empty body)';
}

const seg = (id: string) => encodeURIComponent(id);

export class FirecrackerApiClient {
  readonly #transport: ApiTransport;
  readonly #timeoutMs: number;
  readonly #slowTimeoutMs: number;

  constructor(
    readonly socketPath: string,
    opts: ApiClientOptions = {},
  ) {
    this.#transport = opts.transport ?? httpOverUnixSocket;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    this.#slowTimeoutMs = opts.slowTimeoutMs ?? 120_000;
  }

  /** One API call; resolves with the parsed JSON body (undefined for 204). */
  async call<R = undefined>(method: HttpMethod, path: string, body?: unknown, opts: { signal?: AbortSignal; slow?: boolean } = {}): Promise<R> {
    const timeoutMs = opts.slow ? this.#slowTimeoutMs : this.#timeoutMs;
    let res: ApiResponse;
    try {
      res = await this.#transport(this.socketPath, { method, path, body, signal: opts.signal, timeoutMs });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.name === 'AbortError') throw new KilnError('KILN_ERR_VMM_FAILED', `Firecracker ${method} ${path} aborted`, { method, path }, { cause: e });
      throw new KilnError(
        'KILN_ERR_VMM_FAILED',
        `Firecracker API unreachable at ${this.socketPath} (${method} ${path}): ${err.code ?? err.message}`,
        { method, path, transport_error: err.code ?? err.message },
        { cause: e },
      );
    }
    if (res.status < 200 || res.status > 299) {
      const fault = faultOf(res.body);
      throw new KilnError('KILN_ERR_VMM_FAILED', `Firecracker rejected ${method} ${path} (HTTP ${res.status}): ${fault}`, {
        method,
        path,
        status: res.status,
        fault_message: fault,
      });
    }
    if (!res.body) return undefined as R;
    try {
      return JSON.parse(res.body) as R;
    } catch (e) {
      throw new KilnError('KILN_ERR_VMM_FAILED', `Firecracker ${method} ${path} answered non-JSON: ${res.body.slice(0, 200)}`, { method, path }, { cause: e });
    }
  }

  getVersion(signal?: AbortSignal) {
    return this.call<T.FirecrackerVersionBody>('GET', '/version', undefined, { signal });
  }
  describeInstance(signal?: AbortSignal) {
    return this.call<T.InstanceInfo>('GET', '/', undefined, { signal });
  }
  getVmConfig(signal?: AbortSignal) {
    return this.call<Record<string, unknown>>('GET', '/vm/config', undefined, { signal });
  }
  getMachineConfig(signal?: AbortSignal) {
    return this.call<T.MachineConfiguration>('GET', '/machine-config', undefined, { signal });
  }
  putMachineConfig(body: T.MachineConfiguration, signal?: AbortSignal) {
    return this.call('PUT', '/machine-config', body, { signal });
  }
  putBootSource(body: T.BootSource, signal?: AbortSignal) {
    return this.call('PUT', '/boot-source', body, { signal });
  }
  putDrive(body: T.Drive, signal?: AbortSignal) {
    return this.call('PUT', `/drives/${seg(body.drive_id)}`, body, { signal });
  }
  patchDrive(body: T.PartialDrive, signal?: AbortSignal) {
    return this.call('PATCH', `/drives/${seg(body.drive_id)}`, body, { signal });
  }
  putNetworkInterface(body: T.NetworkInterface, signal?: AbortSignal) {
    return this.call('PUT', `/network-interfaces/${seg(body.iface_id)}`, body, { signal });
  }
  patchNetworkInterface(body: T.PartialNetworkInterface, signal?: AbortSignal) {
    return this.call('PATCH', `/network-interfaces/${seg(body.iface_id)}`, body, { signal });
  }
  putVsock(body: T.Vsock, signal?: AbortSignal) {
    return this.call('PUT', '/vsock', body, { signal });
  }
  /** PUT /serial (Firecracker ≥ 1.16). */
  putSerial(body: { serial_out_path?: string; rate_limiter?: T.TokenBucket }, signal?: AbortSignal) {
    return this.call('PUT', '/serial', body, { signal });
  }

  putEntropy(body: T.EntropyDevice, signal?: AbortSignal) {
    return this.call('PUT', '/entropy', body, { signal });
  }
  putBalloon(body: T.Balloon, signal?: AbortSignal) {
    return this.call('PUT', '/balloon', body, { signal });
  }
  patchBalloon(body: T.BalloonUpdate, signal?: AbortSignal) {
    return this.call('PATCH', '/balloon', body, { signal });
  }
  getBalloon(signal?: AbortSignal) {
    return this.call<T.Balloon>('GET', '/balloon', undefined, { signal });
  }
  getBalloonStats(signal?: AbortSignal) {
    return this.call<T.BalloonStats>('GET', '/balloon/statistics', undefined, { signal });
  }
  patchBalloonStatsInterval(body: T.BalloonStatsUpdate, signal?: AbortSignal) {
    return this.call('PATCH', '/balloon/statistics', body, { signal });
  }
  putLogger(body: T.Logger, signal?: AbortSignal) {
    return this.call('PUT', '/logger', body, { signal });
  }
  putMetrics(body: T.Metrics, signal?: AbortSignal) {
    return this.call('PUT', '/metrics', body, { signal });
  }
  putMmdsConfig(body: T.MmdsConfig, signal?: AbortSignal) {
    return this.call('PUT', '/mmds/config', body, { signal });
  }
  putMmds(data: Record<string, unknown>, signal?: AbortSignal) {
    return this.call('PUT', '/mmds', data, { signal });
  }
  patchMmds(patch: Record<string, unknown>, signal?: AbortSignal) {
    return this.call('PATCH', '/mmds', patch, { signal });
  }
  getMmds(signal?: AbortSignal) {
    return this.call<Record<string, unknown>>('GET', '/mmds', undefined, { signal });
  }
  action(action_type: T.InstanceActionType, signal?: AbortSignal) {
    return this.call('PUT', '/actions', { action_type } satisfies T.InstanceActionInfo, { signal });
  }
  patchVm(state: T.VmState['state'], signal?: AbortSignal) {
    return this.call('PATCH', '/vm', { state } satisfies T.VmState, { signal });
  }
  createSnapshot(body: T.SnapshotCreateParams, signal?: AbortSignal) {
    return this.call('PUT', '/snapshot/create', body, { signal, slow: true });
  }
  loadSnapshot(body: T.SnapshotLoadParams, signal?: AbortSignal) {
    return this.call('PUT', '/snapshot/load', body, { signal, slow: true });
  }
}

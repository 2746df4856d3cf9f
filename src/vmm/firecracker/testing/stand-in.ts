// A stand-in for Firecracker's API server, for tests on hosts without KVM. Every request is
// checked against the Swagger definition (spec-validator.ts) and against the rules the
// definition states in prose and Firecracker enforces: pre-boot-only and post-boot-only
// calls, snapshot load only on a fresh process, path ids equal to body ids and limited to
// [A-Za-z0-9_], files that must exist, no chunked bodies, no GET bodies. Refusals are 400s
// with a `fault_message`, as Firecracker answers. Anything the definition rejects is also
// recorded as a violation, so a test fails even if the client swallowed the error.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { FirecrackerSpec } from './spec-validator.ts';

type Json = Record<string, any>;

export interface RecordedRequest {
  method: string;
  path: string;
  body?: unknown;
  /** Files the request made the VMM open (drive id, or what): the real file each path led to. */
  opened?: Record<string, string>;
  status: number;
  fault?: string;
  violations: string[];
}

export interface StandInOptions {
  socketPath: string;
  /** What GET /version reports (default 1.13.1). */
  version?: string;
  spec?: FirecrackerSpec;
  instanceId?: string;
  /** Emulated jail: paths handed to the VMM resolve under this directory. */
  root?: string;
  /** A logger set on the command line (--log-path, --level): PUT /logger is then refused, as in Firecracker. */
  logger?: { log_path: string; level?: string };
  metricsPath?: string;
  /** Firecracker exits after a failed snapshot load; called once the answer is sent. */
  onFatal?: (fault: string) => void;
  /** SendCtrlAltDel arrived (a guest would now shut down). */
  onCtrlAltDel?: () => void;
  onInstanceStart?: () => void;
  onRequest?: (r: RecordedRequest) => void;
  /** Called as a request arrives, before it is answered. */
  beforeDispatch?: (method: string, path: string) => void;
}

export const NOT_AFTER_BOOT = 'The requested operation is not supported after starting the microVM.';
export const NOT_BEFORE_BOOT = 'The requested operation is not supported before starting the microVM.';
export const LOAD_NOT_ALLOWED = 'Loading a microVM snapshot not allowed after configuring boot-specific resources.';

class Fault extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly fatal = false,
  ) {
    super(message);
  }
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (!patch || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Json = target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Json) } : {};
  for (const [k, v] of Object.entries(patch as Json)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

export class StandInFirecracker {
  readonly requests: RecordedRequest[] = [];
  readonly #o: StandInOptions;
  readonly #server: http.Server;
  #vsockServer: net.Server | undefined;
  readonly #guestListeners = new Map<number, (s: net.Socket) => void>();
  #nextHostPort = 1073741824;
  #started = false;
  #paused = false;
  #bootPath = false;
  #machine: Json = { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false };
  #bootSource: Json | undefined;
  readonly #drives = new Map<string, Json>();
  readonly #nets = new Map<string, Json>();
  #vsock: Json | undefined;
  #entropy: Json | undefined;
  #serial: Json | undefined;
  #balloon: Json | undefined;
  #mmdsConfig: Json | undefined;
  #mmds: unknown;
  #logger: Json | undefined;
  #metrics: Json | undefined;
  ctrlAltDelCount = 0;

  #opened: Record<string, string> = {};
  #metricsFd: number | undefined;

  /** As Firecracker: the metrics file opened once, read-write and non-blocking; a full pipe drops the line. */
  #writeMetrics(line: string): void {
    this.#metricsFd ??= fs.openSync(this.#host(this.#metrics!.metrics_path), fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      fs.writeSync(this.#metricsFd, line);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
    }
  }

  constructor(opts: StandInOptions) {
    this.#o = opts;
    if (opts.logger) this.#logger = opts.logger;
    if (opts.metricsPath) this.#metrics = { metrics_path: opts.metricsPath };
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
  }

  get version(): string {
    return this.#o.version ?? '1.13.1';
  }
  get state(): 'Not started' | 'Running' | 'Paused' {
    return !this.#started ? 'Not started' : this.#paused ? 'Paused' : 'Running';
  }
  get violations(): string[] {
    return this.requests.flatMap((r) => r.violations.map((v) => `${r.method} ${r.path}: ${v}`));
  }
  get vsockHostPath(): string | undefined {
    return this.#vsock ? this.#host(this.#vsock.uds_path) : undefined;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#o.socketPath, () => resolve());
    });
  }

  async close(): Promise<void> {
    this.#vsockServer?.close();
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  /** A guest process listening on vsock `port` (host-initiated connections reach it). */
  guestListen(port: number, handler: (s: net.Socket) => void): void {
    this.#guestListeners.set(port, handler);
  }

  /** A guest process connecting to host port `port` (Firecracker dials `<uds>_<port>`). */
  guestDial(port: number): Promise<net.Socket> {
    const uds = this.vsockHostPath;
    if (!uds || !this.#started) return Promise.reject(new Error('no running vsock device'));
    return new Promise((resolve, reject) => {
      const s = net.createConnection(`${uds}_${port}`);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
  }

  /**
   * Writes to the configured Firecracker log at `level`, as the real one would: dropped below
   * the logger's level; on stdout (the guest's serial console) while no logger is configured.
   */
  log(line: string, level: 'Error' | 'Warning' | 'Info' = 'Info'): void {
    const text = `${new Date().toISOString()} [${this.#o.instanceId ?? 'anonymous-instance'}:main:${level.toUpperCase()}] ${line}\n`;
    if (!this.#logger?.log_path) {
      process.stdout.write(text);
      return;
    }
    const order = ['Off', 'Error', 'Warning', 'Info', 'Debug', 'Trace'];
    const want = order.findIndex((l) => l.toLowerCase() === String(this.#logger!.level ?? 'Info').toLowerCase());
    if (order.indexOf(level) > want) return;
    fs.appendFileSync(this.#host(this.#logger.log_path), text);
  }

  /**
   * Firecracker opens its tap (TUNSETIFF): unprivileged (jailed), only a tap owned by its uid
   * or group. Checked through sysfs (the stand-in runs in the host's network namespace).
   */
  #openTap(tap: string): void {
    const uid = process.getuid?.() ?? 0;
    if (uid === 0) return;
    const read = (f: string) => {
      try {
        return Number(fs.readFileSync(`/sys/class/net/${tap}/${f}`, 'utf8').trim());
      } catch {
        return undefined;
      }
    };
    const owner = read('owner');
    if (owner === undefined) throw new Fault(400, `Could not create the network device: Open tap device failed: Error while creating ifreq structure: No such device (os error 19). Invalid TUN/TAP Backend provided by ${tap}.`);
    if (owner !== uid && read('group') !== process.getgid?.()) {
      throw new Fault(400, `Could not create the network device: Open tap device failed: Error while creating ifreq structure: Operation not permitted (os error 1). Invalid TUN/TAP Backend provided by ${tap}.`);
    }
  }

  /** Opens `p` as Firecracker would (read-only, or read-write), as the process's own uid. */
  #open(p: string, what: string, writable: boolean, fatal = false, key?: string): void {
    const host = this.#host(p);
    try {
      fs.closeSync(fs.openSync(host, writable ? 'r+' : 'r'));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const os = err.code === 'EACCES' ? 'Permission denied (os error 13)' : err.code === 'ENOENT' ? 'No such file or directory (os error 2)' : err.message;
      throw new Fault(400, `${what} ${p}: ${os}`, fatal);
    }
    if (key) this.#opened[key] = fs.realpathSync(host);
  }

  #host(p: string): string {
    return this.#o.root ? path.join(this.#o.root, path.resolve('/', p)) : path.resolve(p);
  }

  #mustExist(p: string | undefined, what: string, fatal = false): void {
    if (p === undefined) return;
    if (!fs.existsSync(this.#host(p))) throw new Fault(400, `${what} ${p}: No such file or directory (os error 2)`, fatal);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const method = req.method ?? '';
    const url = req.url ?? '';
    this.#o.beforeDispatch?.(method, url);
    const violations: string[] = [];
    let status = 204;
    let out: unknown;
    let body: unknown;
    let fatal = false;
    try {
      if (req.headers['transfer-encoding']) {
        violations.push(`Transfer-Encoding: ${req.headers['transfer-encoding']} (Firecracker's HTTP server needs Content-Length)`);
        throw new Fault(400, 'Unsupported transfer encoding: Firecracker requires a Content-Length.');
      }
      if (raw.length && method === 'GET') {
        violations.push('GET with a body');
        throw new Fault(400, 'GET request cannot have a body.');
      }
      if (!raw.length && (method === 'PUT' || (method === 'PATCH' && !url.startsWith('/balloon/hinting')))) {
        violations.push(`${method} without a body`);
        throw new Fault(400, `Empty ${method} request.`);
      }
      if (raw.length) {
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch (e) {
          violations.push('body is not JSON');
          throw new Fault(400, `An error occurred when deserializing the json body of a request: ${(e as Error).message}.`);
        }
      }
      const problems = this.#o.spec?.validateRequest(method, url, body) ?? [];
      if (problems.length) {
        violations.push(...problems);
        const unknownPath = problems.some((p) => p.includes('is not an operation'));
        throw new Fault(
          400,
          unknownPath
            ? `Invalid request method and/or path: ${method} ${url}.`
            : `An error occurred when deserializing the json body of a request: ${problems.join('; ')}.`,
        );
      }
      const r = await this.#dispatch(method, url, body);
      if (r !== undefined) {
        status = 200;
        out = r;
      }
    } catch (e) {
      status = e instanceof Fault ? e.status : 500;
      fatal = e instanceof Fault && e.fatal;
      out = { fault_message: (e as Error).message };
    }
    for (const v of this.#o.spec?.validateResponse(method, url, status, out) ?? []) violations.push(`stand-in response: ${v}`);
    const rec: RecordedRequest = { method, path: url, status, violations };
    if (body !== undefined) rec.body = body;
    if (Object.keys(this.#opened).length) rec.opened = this.#opened;
    this.#opened = {};
    if (status >= 300) rec.fault = (out as Json).fault_message;
    this.requests.push(rec);
    this.#o.onRequest?.(rec);
    const payload = out === undefined ? undefined : Buffer.from(JSON.stringify(out));
    res.writeHead(status, payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {});
    res.end(payload, () => {
      if (fatal) this.#o.onFatal?.(rec.fault ?? '');
    });
  }

  #preBoot(): void {
    if (this.#started) throw new Fault(400, NOT_AFTER_BOOT);
  }
  #postBoot(): void {
    if (!this.#started) throw new Fault(400, NOT_BEFORE_BOOT);
  }
  #bootSpecific(): void {
    this.#preBoot();
    this.#bootPath = true;
  }

  #checkedId(id: string | undefined, bodyId: unknown): string {
    if (!id) throw new Fault(400, 'The ID cannot be empty.');
    if (!/^[A-Za-z0-9_]+$/.test(id)) throw new Fault(400, 'API Resource IDs can only contain alphanumeric characters and underscores.');
    if (id !== bodyId) throw new Fault(400, 'The id from the path does not match the id from the body!');
    return id;
  }

  async #dispatch(method: string, url: string, body: unknown): Promise<unknown> {
    const b = (body ?? {}) as Json;
    const segs = url.split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
    const [top = '', id] = segs;
    const key = `${method} /${top}${top === 'drives' || top === 'network-interfaces' ? '/{id}' : segs.length > 1 ? `/${segs.slice(1).join('/')}` : ''}`;
    switch (key) {
      case 'GET /':
        return { app_name: 'Firecracker', id: this.#o.instanceId ?? 'anonymous-instance', state: this.state, vmm_version: this.version };
      case 'GET /version':
        return { firecracker_version: this.version };
      case 'GET /machine-config':
        return this.#machine;
      case 'GET /vm/config':
        return this.#fullConfig();
      case 'PUT /machine-config':
      case 'PATCH /machine-config': {
        this.#bootSpecific();
        const next: Json = method === 'PUT' ? { smt: false, track_dirty_pages: false, ...b } : { ...this.#machine, ...b };
        if (next.smt && next.vcpu_count > 1 && next.vcpu_count % 2) {
          throw new Fault(400, 'The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.');
        }
        this.#machine = next;
        return;
      }
      case 'PUT /boot-source':
        this.#bootSpecific();
        this.#open(b.kernel_image_path, 'The kernel file cannot be opened:', false);
        if (b.initrd_path !== undefined) this.#open(b.initrd_path, 'The initrd file cannot be opened:', false);
        this.#bootSource = b;
        return;
      case 'PUT /drives/{id}': {
        const d = this.#checkedId(id, b.drive_id);
        this.#bootSpecific();
        this.#open(b.path_on_host, 'Unable to open the block device backing file', !b.is_read_only, false, `drive:${d}`);
        if (b.is_root_device && [...this.#drives.values()].some((o) => o.is_root_device && o.drive_id !== d)) {
          throw new Fault(400, 'A root block device already exists!');
        }
        this.#drives.set(d, b);
        return;
      }
      case 'PATCH /drives/{id}': {
        const d = this.#checkedId(id, b.drive_id);
        this.#postBoot();
        const cur = this.#drives.get(d);
        if (!cur) throw new Fault(400, 'Invalid block device ID!');
        this.#mustExist(b.path_on_host, 'Unable to open the block device backing file');
        this.#drives.set(d, { ...cur, ...b });
        return;
      }
      case 'PUT /network-interfaces/{id}': {
        const i = this.#checkedId(id, b.iface_id);
        this.#bootSpecific();
        this.#openTap(b.host_dev_name);
        this.#nets.set(i, b);
        return;
      }
      case 'PATCH /network-interfaces/{id}': {
        const i = this.#checkedId(id, b.iface_id);
        this.#postBoot();
        const cur = this.#nets.get(i);
        if (!cur) throw new Fault(400, `Invalid interface ID - not found: ${i}`);
        this.#nets.set(i, { ...cur, ...b });
        return;
      }
      case 'PUT /vsock':
        this.#bootSpecific();
        this.#vsock = b;
        return;
      case 'PUT /serial':
        this.#preBoot();
        if (b.serial_out_path !== undefined) this.#open(b.serial_out_path, 'Failed to open serial output:', true);
        this.#serial = b;
        return;
      case 'PUT /entropy':
        this.#bootSpecific();
        this.#entropy = b;
        return;
      case 'PUT /balloon':
        this.#bootSpecific();
        this.#balloon = b;
        return;
      case 'GET /balloon':
        if (!this.#balloon) throw new Fault(400, 'No balloon device found.');
        return this.#balloon;
      case 'PATCH /balloon':
        this.#postBoot();
        if (!this.#balloon) throw new Fault(400, 'No balloon device found.');
        this.#balloon = { ...this.#balloon, amount_mib: b.amount_mib };
        return;
      case 'GET /balloon/statistics': {
        this.#postBoot();
        if (!this.#balloon?.stats_polling_interval_s) throw new Fault(400, 'Statistics for the balloon device are not enabled');
        const mib = this.#balloon.amount_mib as number;
        return { target_pages: mib * 256, actual_pages: mib * 256, target_mib: mib, actual_mib: mib };
      }
      case 'PATCH /balloon/statistics':
        this.#postBoot();
        if (!this.#balloon) throw new Fault(400, 'No balloon device found.');
        if (!this.#balloon.stats_polling_interval_s !== !b.stats_polling_interval_s) {
          throw new Fault(400, 'Statistics cannot be turned on/off after boot.');
        }
        this.#balloon = { ...this.#balloon, stats_polling_interval_s: b.stats_polling_interval_s };
        return;
      case 'PUT /logger':
        this.#preBoot();
        if (this.#o.logger) throw new Fault(400, 'Reinitialization of logger not allowed.');
        this.#open(b.log_path, 'Failed to open target file:', true);
        this.#logger = b;
        return;
      case 'PUT /metrics':
        this.#preBoot();
        if (this.#metrics) throw new Fault(400, 'Reinitialization of metrics not allowed.');
        this.#open(b.metrics_path, 'Failed to open target file:', true);
        this.#metrics = b;
        return;
      case 'PUT /mmds/config': {
        this.#bootSpecific();
        const ifaces = b.network_interfaces as string[];
        if (!ifaces.length) throw new Fault(400, 'The list of network interface IDs that allow forwarding MMDS requests is empty.');
        if (ifaces.some((i) => !this.#nets.has(i))) {
          throw new Fault(400, 'The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.');
        }
        this.#mmdsConfig = b;
        return;
      }
      case 'PUT /mmds':
        this.#mmds = body;
        return;
      case 'PATCH /mmds':
        if (this.#mmds === undefined) throw new Fault(400, 'The MMDS data store is not initialized.');
        this.#mmds = mergePatch(this.#mmds, body);
        return;
      case 'GET /mmds':
        return this.#mmds ?? {};
      case 'PUT /actions':
        return this.#action(b.action_type);
      case 'PATCH /vm':
        this.#postBoot();
        this.#paused = b.state === 'Paused';
        return;
      case 'PUT /snapshot/create':
        return this.#createSnapshot(b);
      case 'PUT /snapshot/load':
        return this.#loadSnapshot(b);
      default:
        throw new Fault(400, `Invalid request method and/or path: ${method} ${url}.`);
    }
  }

  #fullConfig(): Json {
    const c: Json = { 'machine-config': this.#machine, drives: [...this.#drives.values()], 'network-interfaces': [...this.#nets.values()] };
    if (this.#bootSource) c['boot-source'] = this.#bootSource;
    if (this.#vsock) c.vsock = this.#vsock;
    if (this.#entropy) c.entropy = this.#entropy;
    if (this.#balloon) c.balloon = this.#balloon;
    if (this.#mmdsConfig) c['mmds-config'] = this.#mmdsConfig;
    if (this.#logger) c.logger = this.#logger;
    if (this.#metrics) c.metrics = this.#metrics;
    return c;
  }

  async #action(type: string): Promise<undefined> {
    if (type === 'InstanceStart') {
      this.#preBoot();
      if (!this.#bootSource) throw new Fault(400, 'Cannot start microvm without kernel configuration.');
      await this.#activateVsock();
      this.#started = true;
      this.log('Successfully started microvm that was configured from one single json');
      this.#o.onInstanceStart?.();
    } else if (type === 'SendCtrlAltDel') {
      this.#postBoot();
      this.ctrlAltDelCount++;
      this.#o.onCtrlAltDel?.();
    } else if (type === 'FlushMetrics') {
      this.#postBoot();
      if (this.#metrics) this.#writeMetrics(`${JSON.stringify({ utc_timestamp_ms: Date.now(), uart: { rate_limiter_dropped_bytes: 0 } })}\n`);
    }
    return undefined;
  }

  async #activateVsock(): Promise<void> {
    if (!this.#vsock) return;
    const uds = this.#host(this.#vsock.uds_path);
    if (fs.existsSync(uds)) throw new Fault(400, `Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })`);
    const server = net.createServer((s) => this.#vsockConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new Fault(400, `Cannot create backend for vsock device: ${e.message}`)));
      server.listen(uds, () => resolve());
    });
    this.#vsockServer = server;
    this.#opened.vsock = path.join(fs.realpathSync(path.dirname(uds)), path.basename(uds));
  }

  #vsockConnection(s: net.Socket): void {
    let buf = '';
    const onData = (c: Buffer) => {
      buf += c.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > 32) s.destroy();
        return;
      }
      s.off('data', onData);
      const m = /^CONNECT (\d+)$/.exec(buf.slice(0, nl));
      const handler = m ? this.#guestListeners.get(Number(m[1])) : undefined;
      if (!handler) return void s.destroy();
      s.write(`OK ${this.#nextHostPort++}\n`);
      const rest = buf.slice(nl + 1);
      if (rest) s.unshift(Buffer.from(rest, 'latin1'));
      handler(s);
    };
    s.on('data', onData);
    s.on('error', () => {});
  }

  #createSnapshot(b: Json): undefined {
    this.#postBoot();
    if (!this.#paused) throw new Fault(400, 'Cannot create snapshot: the microVM is not paused.');
    const state = this.#host(b.snapshot_path);
    const mem = this.#host(b.mem_file_path);
    for (const f of [state, mem]) {
      if (!fs.existsSync(path.dirname(f))) throw new Fault(400, `Cannot create snapshot file ${f}: No such file or directory (os error 2)`);
    }
    const snapshot = {
      standIn: 'firecracker-snapshot',
      type: b.snapshot_type ?? 'Full',
      machine: this.#machine,
      drives: [...this.#drives.values()],
      nets: [...this.#nets.values()],
      vsock: this.#vsock,
      entropy: this.#entropy,
      balloon: this.#balloon,
      mmdsConfig: this.#mmdsConfig,
    };
    fs.writeFileSync(state, JSON.stringify(snapshot));
    fs.writeFileSync(mem, Buffer.alloc(4096, 0x42));
    return undefined;
  }

  async #loadSnapshot(b: Json): Promise<undefined> {
    this.#preBoot();
    if (this.#bootPath) throw new Fault(400, LOAD_NOT_ALLOWED);
    if ((b.mem_file_path === undefined) === (b.mem_backend === undefined)) {
      throw new Fault(400, 'Exactly one of mem_file_path and mem_backend must be given.');
    }
    const fail = (m: string): never => {
      throw new Fault(400, `Load snapshot error: Failed to restore from snapshot: ${m}`, true);
    };
    let snap: Json;
    try {
      snap = JSON.parse(fs.readFileSync(this.#host(b.snapshot_path), 'utf8')) as Json;
    } catch (e) {
      return fail(`Failed to open snapshot file: ${(e as Error).message}`);
    }
    const backend: Json = b.mem_backend ?? { backend_type: 'File', backend_path: b.mem_file_path };
    if (backend.backend_type === 'File') {
      if (!fs.existsSync(this.#host(backend.backend_path))) fail(`Failed to open memory backend file ${backend.backend_path}`);
    } else {
      await this.#sendUffdHandshake(this.#host(backend.backend_path), snap).catch((e: Error) => fail(`UFFD handler: ${e.message}`));
    }
    // Every drive is reopened where the snapshot recorded it: the API has no drive override.
    for (const d of snap.drives as Json[]) {
      try {
        if (d.path_on_host) this.#open(d.path_on_host, 'Unable to open the block device backing file', !d.is_read_only, false, `drive:${d.drive_id}`);
      } catch (e) {
        fail((e as Error).message);
      }
      this.#drives.set(d.drive_id, d);
    }
    for (const n of snap.nets as Json[]) this.#nets.set(n.iface_id, { ...n });
    for (const o of (b.network_overrides ?? []) as Json[]) {
      const n = this.#nets.get(o.iface_id);
      if (!n) fail(`Invalid network override: no interface ${o.iface_id}`);
      n!.host_dev_name = o.host_dev_name;
    }
    this.#machine = { ...snap.machine, track_dirty_pages: b.track_dirty_pages ?? false };
    this.#vsock = snap.vsock ? { ...snap.vsock, ...(b.vsock_override ? { uds_path: b.vsock_override.uds_path } : {}) } : undefined;
    this.#entropy = snap.entropy;
    this.#balloon = snap.balloon;
    this.#mmdsConfig = snap.mmdsConfig;
    try {
      await this.#activateVsock();
    } catch (e) {
      fail((e as Error).message);
    }
    this.#started = true;
    this.#paused = !b.resume_vm;
    return undefined;
  }

  /** What Firecracker does with a UFFD backend: connect to the handler and describe guest memory. */
  #sendUffdHandshake(sock: string, snap: Json): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(sock);
      s.once('error', reject);
      s.once('connect', () => {
        const regions = [{ base_host_virt_addr: 0, size: (snap.machine?.mem_size_mib ?? 128) * 1024 * 1024, offset: 0, page_size: 4096 }];
        s.end(`${JSON.stringify(regions)}\n`, () => resolve());
      });
    });
  }
}

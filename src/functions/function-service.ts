// Functions: deploy (a version per PUT), invoke on instances placed by a per-function
// scheduler, record every invocation. Function code only ever runs in guests: kilnd reads
// archives, stores the bytes and hands the files to the shim inside the VM.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { HOST_CPUS, HOST_MEMORY_MIB } from '../config.ts';
import { KilnError, type ErrorCode } from '../errors.ts';
import type { RecipeBuilder } from '../image/recipes/debian-recipe.ts';
import type { FunctionConfig, FunctionStore, FunctionVersion, InvocationRecord, InvocationStatus } from '../store/function-store.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import type { VmManager } from '../vm/vm-manager.ts';
import { archivePackage, inlinePackage, shimFiles, type ArchiveFormat, type CodePackage } from './code-package.ts';
import type { FunctionMetrics } from './function-metrics.ts';
import { RestoreSource, type TemplateProvider } from './restore-source.ts';
import { BootSource, FUNCTION_VM_PREFIX, WarmPool, shapeKey, type BlankInstance, type InstanceShape, type InstanceSource } from './instance-source.ts';
import { RUNTIMES, isRuntime, runtimeRecipe, runtimeSpec, type RuntimeName } from './runtimes.ts';
import { FunctionScheduler, type SchedulerLimits } from './scheduler.ts';
import type { GuestError } from './shim-client.ts';

export const FUNCTION_NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const HANDLER = /^[A-Za-z0-9_$][A-Za-z0-9_$./-]{0,127}$/;
/** Connections kept per instance to its shim; also the highest allowed concurrency. */
export const MAX_CONCURRENCY = 64;
const KEEP_INVOCATIONS = 1000;
const LOAD_TIMEOUT_MS = 120_000;

/** The API's deploy body (snake_case, as in the verbatim request). */
export interface DeployInput {
  name?: string;
  runtime?: string;
  code?: string;
  /** base64 of a zip, tar or tar.gz file. */
  archive?: string;
  archive_format?: ArchiveFormat;
  /** A custom runtime image (any image with the runtime on PATH); default: kiln's own. */
  image?: string;
  handler?: string;
  vcpu?: number;
  memory_mb?: number;
  env?: Record<string, string>;
  timeout_ms?: number;
  min_instances?: number;
  max_instances?: number;
  concurrency?: number;
  idle_timeout?: number;
  queue_size?: number;
}

export interface FnInstance {
  blank: BlankInstance;
  version: number;
  loadMs: number;
}

interface FnEntry {
  name: string;
  scheduler: FunctionScheduler<FnInstance>;
  current: FunctionVersion;
}

export interface InvokeOutcome {
  invocation: InvocationRecord;
  result?: unknown;
  error?: KilnError;
}

export interface FunctionServiceOptions {
  store: FunctionStore;
  vms: VmManager;
  recipes: RecipeBuilder;
  stateDir: string;
  poolSize: number;
  bootTimeoutMs: number;
  metrics: FunctionMetrics;
  log: Logger;
  /** Resolves (pulling if needed) a custom runtime image; throws when there is none. */
  resolveImage: (ref: string) => Promise<unknown>;
  /** Tests and benchmarks swap the instance layer; the default is a warm pool over boots. */
  source?: InstanceSource;
  /** Snapshot templates: instances are restored clones once a runtime's template exists. */
  templates?: TemplateProvider;
  /**
   * A cluster node (the store is shared): every node serves every function. Code bytes are
   * stored with each version so any node can load them, and the node follows deploys made
   * through other nodes: at each invoke or update for that function, and every `syncMs` for
   * all (so each node keeps its own warm pool and min_instances of every function).
   */
  cluster?: { syncMs: number };
}

export class FunctionService {
  private readonly fns = new Map<string, FnEntry>();
  private readonly packages = new Map<string, CodePackage>();
  private readonly images = new Map<RuntimeName, Promise<string>>();
  readonly pool: WarmPool;
  private reaper: NodeJS.Timeout | null = null;
  private syncer: NodeJS.Timeout | null = null;
  /** Syncs with the store, one at a time (a function must not be tracked twice). */
  private syncing: Promise<void> = Promise.resolve();

  constructor(private readonly o: FunctionServiceOptions) {
    const boot = new BootSource({
      vms: o.vms,
      runtimeImage: (r) => this.runtimeImage(r),
      bootTimeoutMs: o.bootTimeoutMs,
      connections: MAX_CONCURRENCY,
      log: o.log,
    });
    const made = o.templates
      ? new RestoreSource(boot, { vms: o.vms, templates: o.templates, runtimeImage: (r) => this.runtimeImage(r), bootTimeoutMs: o.bootTimeoutMs, connections: MAX_CONCURRENCY, log: o.log })
      : boot;
    this.pool = new WarmPool(o.source ?? made, o.poolSize, {
      alive: async (inst) => (await o.vms.get(inst.vmId).catch(() => null))?.state === 'ready',
      log: o.log,
    });
    o.metrics.observe(this);
  }

  private get dir(): string {
    return path.join(this.o.stateDir, 'functions');
  }

  /** Removes instances a previous kilnd left (they hold no state), loads functions, starts reaping. */
  async start(): Promise<void> {
    for (const vm of await this.o.vms.list()) {
      if (vm.name.startsWith(FUNCTION_VM_PREFIX)) {
        this.o.log.info({ vm: vm.id }, 'removing a function instance left by a previous kilnd');
        await this.o.vms.delete(vm.id).catch((e) => this.o.log.warn({ vm: vm.id, err: e }, 'could not remove leftover function instance'));
      }
    }
    for (const f of await this.o.store.listFunctions()) {
      const v = await this.o.store.getVersion(f.name, f.version);
      if (v) this.track(v);
    }
    this.reaper = setInterval(() => {
      for (const e of this.fns.values()) e.scheduler.reap();
    }, 500);
    this.reaper.unref();
    if (this.o.cluster) {
      this.syncer = setInterval(() => void this.sync().catch((e) => this.o.log.warn({ err: e }, 'function sync with the cluster store failed')), this.o.cluster.syncMs);
      this.syncer.unref();
    }
  }

  async close(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    if (this.syncer) clearInterval(this.syncer);
    await this.syncing.catch(() => {});
    await this.pool.close(false);
  }

  // ---- runtime images --------------------------------------------------------------------

  /** The runtime's image, built from its Debian recipe on first use (~1 min, then cached). */
  runtimeImage(runtime: RuntimeName): Promise<string> {
    let p = this.images.get(runtime);
    if (!p) {
      p = (async () => {
        const recipe = await runtimeRecipe(runtime);
        const t0 = Date.now();
        this.o.log.info({ runtime }, 'preparing function runtime image');
        try {
          const img = await this.o.recipes.ensure(recipe);
          this.o.log.info({ runtime, image: img.name, ms: Date.now() - t0 }, 'function runtime image ready');
          return img.name;
        } catch (e) {
          this.images.delete(runtime);
          throw new KilnError('KILN_ERR_RUNTIME_UNAVAILABLE', `could not build the ${runtime} runtime image: ${(e as Error).message}`, { runtime });
        }
      })();
      this.images.set(runtime, p);
    }
    return p;
  }

  // ---- deploy ----------------------------------------------------------------------------

  async create(input: DeployInput): Promise<FunctionVersion> {
    const name = checkName(input.name);
    if (await this.o.store.getFunction(name)) {
      throw new KilnError('KILN_ERR_NAME_CONFLICT', `a function named ${JSON.stringify(name)} already exists (PUT /v1/functions/${name} deploys a new version)`);
    }
    const { config, pkg, raw } = await this.prepare(input, null);
    const v = this.versionRecord(name, 1, config, pkg);
    await this.saveCode(name, 1, raw!);
    await this.o.store.createFunction(v, this.o.cluster ? raw! : undefined);
    this.packages.set(`${name}@1`, pkg);
    this.track(v);
    return v;
  }

  /** PUT: a new version; omitted fields (code included) keep the current version's. */
  async update(nameIn: string, input: DeployInput): Promise<FunctionVersion> {
    const name = checkName(nameIn);
    if (input.name !== undefined && input.name !== name) throw new KilnError('KILN_ERR_VALIDATION', `body name ${JSON.stringify(input.name)} differs from the path's ${JSON.stringify(name)}`, { field: 'name' });
    // A cluster node builds on the newest version, wherever it was deployed.
    if (this.o.cluster) await this.syncOne(name);
    const e = this.entry(name);
    const { config, pkg, raw } = await this.prepare(input, e.current);
    const version = e.current.version + 1;
    const v = this.versionRecord(name, version, config, pkg);
    const bytes = raw ?? (await this.readCode(name, e.current.version));
    await this.saveCode(name, version, bytes);
    await this.o.store.addVersion(v, this.o.cluster ? bytes : undefined);
    this.packages.set(`${name}@${version}`, pkg);
    const prev = e.current;
    e.current = v;
    e.scheduler.setVersion(version, limitsOf(v));
    this.pool.warm(v.runtime as RuntimeName, shapeOf(v));
    await this.forgetUnusedShape(prev);
    return v;
  }

  /** Functions served here → their ready instances (a cluster node's capacity report). */
  served(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const e of this.fns.values()) out[e.name] = e.scheduler.snapshot().instances.filter((m) => m.state === 'ready').length;
    return out;
  }

  async delete(nameIn: string): Promise<void> {
    const name = checkName(nameIn);
    if (this.o.cluster) await this.syncOne(name);
    const e = this.entry(name);
    await this.o.store.deleteFunction(e.name);
    await this.untrack(e);
  }

  /** Stops serving a function here: its instances, its cached code, its pool shape if unused. */
  private async untrack(e: FnEntry): Promise<void> {
    this.fns.delete(e.name);
    for (const k of [...this.packages.keys()]) if (k.startsWith(`${e.name}@`)) this.packages.delete(k);
    await e.scheduler.close();
    await fs.rm(path.join(this.dir, e.name), { recursive: true, force: true });
    await this.forgetUnusedShape(e.current);
  }

  // ---- cluster: following the shared store -------------------------------------------------

  /** After a fence killed this node's VMs: every function instance is gone; new ones start on demand. */
  async afterFence(): Promise<void> {
    for (const e of this.fns.values()) await e.scheduler.retireAll('its node was fenced (the VM was killed)');
  }

  /** Every function in the store, at its current version, is served here; no other. */
  sync(): Promise<void> {
    const run = this.syncing.then(async () => {
      const rows = await this.o.store.listFunctions();
      const names = new Set(rows.map((r) => r.name));
      for (const r of rows) await this.follow(r.name, r.version);
      for (const e of [...this.fns.values()]) if (!names.has(e.name)) await this.untrack(e);
    });
    this.syncing = run.catch(() => {});
    return run;
  }

  /** One function brought up to the store's state (deployed, updated or deleted elsewhere). */
  private syncOne(name: string): Promise<void> {
    const run = this.syncing.then(async () => {
      const row = await this.o.store.getFunction(name);
      if (row) await this.follow(name, row.version);
      else if (this.fns.has(name)) await this.untrack(this.fns.get(name)!);
    });
    this.syncing = run.catch(() => {});
    return run;
  }

  /** Under `syncing`: track the function, or move it to a newer version deployed elsewhere. */
  private async follow(name: string, version: number): Promise<void> {
    const e = this.fns.get(name);
    if (e && e.current.version >= version) return;
    const v = await this.o.store.getVersion(name, version);
    if (!v) return;
    if (!e) {
      this.o.log.info({ function: name, version }, 'serving a function deployed through another node');
      this.track(v);
      return;
    }
    const prev = e.current;
    e.current = v;
    e.scheduler.setVersion(version, limitsOf(v));
    this.pool.warm(v.runtime as RuntimeName, shapeOf(v));
    await this.forgetUnusedShape(prev);
  }

  /** The pool keeps a shape only while some function has it. */
  private async forgetUnusedShape(v: FunctionConfig): Promise<void> {
    const key = shapeKey(v.runtime as RuntimeName, shapeOf(v));
    const used = [...this.fns.values()].some((f) => shapeKey(f.current.runtime as RuntimeName, shapeOf(f.current)) === key);
    if (!used) await this.pool.forget(v.runtime as RuntimeName, shapeOf(v));
  }

  list(): FnEntry[] {
    return [...this.fns.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(nameIn: string): FnEntry {
    return this.entry(checkName(nameIn));
  }

  async getVersion(name: string, version: number): Promise<FunctionVersion> {
    const v = await this.o.store.getVersion(name, version);
    if (!v) throw new KilnError('KILN_ERR_FUNCTION_NOT_FOUND', `function ${name} has no version ${version}`);
    return v;
  }

  invocations(nameIn: string, limit = 100): Promise<InvocationRecord[]> {
    return this.o.store.listInvocations(this.entry(checkName(nameIn)).name, limit);
  }

  private entry(name: string): FnEntry {
    const e = this.fns.get(name);
    if (!e) throw new KilnError('KILN_ERR_FUNCTION_NOT_FOUND', `no function ${JSON.stringify(name)}`);
    return e;
  }

  private async prepare(input: DeployInput, prev: FunctionVersion | null): Promise<{ config: FunctionConfig; pkg: CodePackage; raw: Buffer | null }> {
    const runtime = input.runtime ?? prev?.runtime;
    if (!runtime) throw new KilnError('KILN_ERR_VALIDATION', `runtime is required (one of: ${RUNTIMES.join(', ')})`, { field: 'runtime' });
    if (!isRuntime(runtime)) throw new KilnError('KILN_ERR_VALIDATION', `unknown runtime ${JSON.stringify(runtime)}; kiln has: ${RUNTIMES.join(', ')}`, { field: 'runtime', runtimes: [...RUNTIMES] });
    const handler = input.handler ?? prev?.handler ?? 'handler';
    if (!HANDLER.test(handler) || handler.split(/[./]/).includes('') || handler.includes('..')) {
      throw new KilnError('KILN_ERR_VALIDATION', `handler ${JSON.stringify(handler)} is not a function name ("handler") or module.function ("index.handler")`, { field: 'handler' });
    }
    const image = input.image ?? prev?.image ?? null;
    // A custom image must exist (a registry reference is pulled now, not at the first call).
    if (image && image !== prev?.image) await this.o.resolveImage(image);
    const config: FunctionConfig = {
      runtime,
      image,
      handler,
      vcpus: input.vcpu ?? prev?.vcpus ?? 1,
      memoryMib: input.memory_mb ?? prev?.memoryMib ?? 256,
      env: input.env ?? prev?.env ?? {},
      timeoutMs: input.timeout_ms ?? prev?.timeoutMs ?? 30_000,
      minInstances: input.min_instances ?? prev?.minInstances ?? 0,
      maxInstances: input.max_instances ?? prev?.maxInstances ?? 4,
      concurrency: input.concurrency ?? prev?.concurrency ?? 1,
      idleTimeoutS: input.idle_timeout ?? prev?.idleTimeoutS ?? 300,
      queueSize: input.queue_size ?? prev?.queueSize ?? 100,
    };
    if (config.vcpus > HOST_CPUS) throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `vcpu ${config.vcpus} exceeds this host's ${HOST_CPUS} CPUs`, { field: 'vcpu' });
    if (config.memoryMib > HOST_MEMORY_MIB) throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `memory_mb ${config.memoryMib} exceeds this host's ${HOST_MEMORY_MIB} MiB`, { field: 'memory_mb' });
    if (config.minInstances > config.maxInstances) throw new KilnError('KILN_ERR_VALIDATION', `min_instances ${config.minInstances} exceeds max_instances ${config.maxInstances}`, { field: 'min_instances' });
    if (input.code !== undefined && input.archive !== undefined) throw new KilnError('KILN_ERR_VALIDATION', 'give either code (inline source) or archive (base64 zip/tar), not both', { field: 'code' });
    const spec = runtimeSpec(runtime);
    if (input.code !== undefined) return { config, pkg: inlinePackage(input.code, spec.inlineFile), raw: Buffer.from(input.code, 'utf8') };
    if (input.archive !== undefined) {
      const buf = Buffer.from(input.archive, 'base64');
      return { config, pkg: await archivePackage(buf, input.archive_format), raw: buf };
    }
    if (!prev) throw new KilnError('KILN_ERR_VALIDATION', 'code is required: "code" (inline source) or "archive" (base64 zip/tar)', { field: 'code' });
    if (prev.runtime !== runtime && prev.codeKind === 'inline') {
      // The inline file's name is the runtime's: re-read it under the new runtime.
      return { config, pkg: inlinePackage((await this.readCode(prev.function, prev.version)).toString('utf8'), spec.inlineFile), raw: null };
    }
    return { config, pkg: await this.codePackage(prev.function, prev.version), raw: null };
  }

  private versionRecord(name: string, version: number, config: FunctionConfig, pkg: CodePackage): FunctionVersion {
    return { ...config, function: name, version, codeKind: pkg.kind, codeSha256: pkg.sha256, codeSize: pkg.size, loadError: null, createdAt: Date.now() };
  }

  private codeFile(name: string, version: number): string {
    return path.join(this.dir, name, `v${version}.code`);
  }

  private async saveCode(name: string, version: number, raw: Buffer): Promise<void> {
    await fs.mkdir(path.join(this.dir, name), { recursive: true });
    await writeFileAtomic(this.codeFile(name, version), raw);
  }

  /** The version's code: the local copy, else (a cluster node) the store's, kept locally from then on. */
  private async readCode(name: string, version: number): Promise<Buffer> {
    try {
      return await fs.readFile(this.codeFile(name, version));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !this.o.cluster) throw e;
    }
    const code = await this.o.store.getCode(name, version);
    if (!code) throw new KilnError('KILN_ERR_FUNCTION_LOAD', `the code of ${name} v${version} is not in the cluster store (deployed before this node's kiln stored code there: deploy a new version)`);
    await this.saveCode(name, version, code);
    return code;
  }

  private async codePackage(name: string, version: number): Promise<CodePackage> {
    const key = `${name}@${version}`;
    let pkg = this.packages.get(key);
    if (!pkg) {
      const v = await this.getVersion(name, version);
      const raw = await this.readCode(name, version);
      pkg = v.codeKind === 'inline' ? inlinePackage(raw.toString('utf8'), runtimeSpec(v.runtime as RuntimeName).inlineFile) : await archivePackage(raw);
      this.packages.set(key, pkg);
    }
    return pkg;
  }

  private track(v: FunctionVersion): void {
    const name = v.function;
    const scheduler = new FunctionScheduler<FnInstance>(
      name,
      { start: (version) => this.startInstance(name, version), stop: (inst, why) => this.stopInstance(name, inst, why) },
      v.version,
      limitsOf(v),
      (e, what) => this.o.log.warn({ function: name, err: e, what }, 'function instance management'),
    );
    this.fns.set(name, { name, scheduler, current: v });
    this.pool.warm(v.runtime as RuntimeName, shapeOf(v));
    scheduler.ensureMinInstances();
  }

  // ---- instances ---------------------------------------------------------------------------

  private async startInstance(name: string, version: number): Promise<FnInstance> {
    const v = await this.getVersion(name, version);
    if (v.loadError) throw loadFailure(v.loadError);
    const pkg = await this.codePackage(name, version);
    const blank = await this.pool.acquire(v.runtime as RuntimeName, shapeOf(v));
    this.o.metrics.poolResult(v.runtime, blank.origin);
    try {
      const t0 = performance.now();
      const r = await blank.shim.load({ function: name, version, handler: v.handler, env: v.env, files: shimFiles(pkg) }, AbortSignal.timeout(LOAD_TIMEOUT_MS));
      if (!r.ok) {
        // The code is at fault and will fail the same way every time: remembered on the version.
        if (r.error.type === 'SyntaxError' || r.error.type === 'HandlerNotFound') {
          await this.o.store.setLoadError(name, version, r.error);
          const e = this.fns.get(name);
          if (e?.current.version === version) e.current = { ...e.current, loadError: r.error };
        }
        throw withInstance(loadFailure(r.error), blank);
      }
      this.o.log.debug({ function: name, version, vm: blank.vmId, origin: blank.origin }, 'function instance ready');
      return { blank, version, loadMs: performance.now() - t0 };
    } catch (e) {
      await this.pool.destroy(blank).catch(() => {});
      throw e;
    }
  }

  private async stopInstance(name: string, inst: FnInstance, why: string): Promise<void> {
    this.o.log.info({ function: name, vm: inst.blank.vmId, version: inst.version, why }, 'function instance stopped');
    await this.pool.destroy(inst.blank);
  }

  private async oomEvidence(inst: FnInstance): Promise<string | null> {
    const log = await this.o.vms.logs(inst.blank.vmId, 64 * 1024).catch(() => '');
    return OOM_EVIDENCE.exec(log)?.[0] ?? null;
  }

  /** Why a shim's connection broke mid-call: its VM went down; the console says whether it was memory. */
  private async crashCause(inst: FnInstance): Promise<{ code: ErrorCode; status: InvocationStatus; message: string }> {
    const vmId = inst.blank.vmId;
    await this.o.vms.waitFor(vmId, ['stopped'], 5_000).catch(() => {});
    const vm = await this.o.vms.get(vmId).catch(() => null);
    const log = await this.o.vms.logs(vmId, 64 * 1024).catch(() => '');
    const oom = OOM_EVIDENCE.exec(log);
    if (oom) {
      return { code: 'KILN_ERR_FUNCTION_OOM', status: 'oom', message: `the function ran out of memory (${inst.blank.shape.memoryMib} MiB; guest: "${oom[0]}"); its instance was replaced` };
    }
    const exit = vm?.exitCode != null ? ` (runtime exit code ${vm.exitCode})` : '';
    return { code: 'KILN_ERR_FUNCTION_CRASHED', status: 'crashed', message: `the function's runtime died during the call${exit}; its instance was replaced` };
  }

  // ---- invoke ------------------------------------------------------------------------------

  async invoke(nameIn: string, event: unknown): Promise<InvokeOutcome> {
    const t0 = performance.now();
    // A cluster node serves the version current in the store, whichever node deployed it.
    if (this.o.cluster) await this.syncOne(checkName(nameIn));
    const e = this.entry(checkName(nameIn));
    const v = e.current;
    const inv: InvocationRecord = {
      id: `inv-${randomBytes(6).toString('hex')}`,
      function: e.name,
      version: v.version,
      status: 'running',
      cold: false,
      source: null,
      instance: null,
      startedAt: Date.now(),
      durationMs: null,
      guestMs: null,
      timeline: [],
      error: null,
      logs: '',
    };
    const finish = async (status: InvocationStatus, err?: KilnError, result?: unknown): Promise<InvokeOutcome> => {
      inv.status = status;
      inv.durationMs = performance.now() - t0;
      if (err) inv.error = { code: err.code, message: err.message, ...(err.details?.type ? { type: String(err.details.type), stack: (err.details.stack as string | null) ?? null } : {}) };
      try {
        await this.o.store.upsertInvocation(inv);
        if (Math.random() < 0.02) await this.o.store.pruneInvocations(e.name, KEEP_INVOCATIONS);
      } catch (se) {
        // The function was deleted while this call ran: its history went with it.
        if (this.fns.get(e.name) === e) throw se;
      }
      this.o.metrics.invoked(v.runtime, inv);
      if (err) err.details!.invocation = inv.id;
      return { invocation: inv, result, error: err };
    };
    if (v.loadError) return finish('load_error', loadFailure(v.loadError));
    let slot;
    try {
      slot = await e.scheduler.acquire();
    } catch (err) {
      const ke = err instanceof KilnError ? err : new KilnError('KILN_ERR_INTERNAL', (err as Error).message);
      if (ke.code === 'KILN_ERR_FUNCTION_THROTTLED') {
        this.o.metrics.throttled(v.runtime);
        throw ke;
      }
      const on = ke.details as { vm?: string; source?: InvocationRecord['source'] } | undefined;
      if (on?.vm) Object.assign(inv, { instance: on.vm, source: on.source ?? null, cold: true });
      return finish(ke.code === 'KILN_ERR_FUNCTION_LOAD' ? 'load_error' : 'failed', withDetails(ke));
    }
    const inst = slot.instance;
    inv.version = inst.version;
    inv.cold = slot.cold;
    inv.instance = inst.blank.vmId;
    inv.source = inst.blank.origin;
    if (slot.queuedMs > 0.5) inv.timeline.push({ phase: 'queue', ms: round(slot.queuedMs) });
    if (slot.cold) {
      inv.timeline.push({ phase: `instance.${inst.blank.origin}`, ms: round(inst.blank.acquireMs) });
      // How the VM came up (for a pooled one: earlier, off this call's path): boot or restore.
      inv.timeline.push({ phase: `instance.start.${inst.blank.made}`, ms: round(inst.blank.startMs) });
      inv.timeline.push({ phase: 'code.load', ms: round(inst.loadMs) });
    }
    const version = inst.version === v.version ? v : await this.getVersion(e.name, inst.version);
    const deadline = Date.now() + version.timeoutMs;
    const signal = AbortSignal.timeout(version.timeoutMs);
    const tCall = performance.now();
    try {
      const r = await inst.blank.shim.invoke({ id: inv.id, event, deadline_ms: deadline }, signal);
      inv.timeline.push({ phase: 'invoke', ms: round(performance.now() - tCall) });
      inv.guestMs = Number.isFinite(r.guestMs) ? r.guestMs : null;
      inv.logs = r.logs + (r.logsTruncated ? '\n[kiln: console output truncated]\n' : '');
      if (r.ok) {
        slot.release();
        return finish('ok', undefined, r.result ?? null);
      }
      const ge = r.error!;
      // Python's MemoryError, or V8 failing to back an ArrayBuffer: the instance's memory is spent.
      if (ge.type === 'MemoryError' || (ge.type === 'RangeError' && /allocation failed|out of memory/i.test(ge.message))) {
        slot.release('retire');
        return finish('oom', new KilnError('KILN_ERR_FUNCTION_OOM', `the function ran out of memory (${version.memoryMib} MiB): ${ge.message}; its instance was replaced`, { ...ge, logs: inv.logs }));
      }
      slot.release();
      return finish('error', new KilnError('KILN_ERR_FUNCTION_ERROR', `${ge.type}: ${ge.message}`, { type: ge.type, message: ge.message, stack: ge.stack, logs: inv.logs }));
    } catch (err) {
      inv.timeline.push({ phase: 'invoke', ms: round(performance.now() - tCall) });
      if (signal.aborted) {
        // A guest thrashing towards its OOM killer can run into the timeout first: the console says.
        const oom = await this.oomEvidence(inst);
        if (oom) {
          slot.release('retire');
          return finish('oom', new KilnError('KILN_ERR_FUNCTION_OOM', `the function ran out of memory (${version.memoryMib} MiB; guest: "${oom}") and past its timeout of ${version.timeoutMs} ms; its instance was replaced`, { timeout_ms: version.timeoutMs }));
        }
        slot.release('retire');
        return finish('timeout', new KilnError('KILN_ERR_FUNCTION_TIMEOUT', `the function ran past its timeout of ${version.timeoutMs} ms; its instance was killed and will be replaced`, { timeout_ms: version.timeoutMs }));
      }
      const cause = await this.crashCause(inst);
      slot.release('retire');
      return finish(cause.status, new KilnError(cause.code, cause.message, { transport: (err as Error).message }));
    }
  }
}

/** What the guest console shows when memory ran out: the kernel's OOM killer, V8's heap limit. */
const OOM_EVIDENCE = /Out of memory: Killed process|oom-kill|invoked oom-killer|heap out of memory|Reached heap limit|MemoryError/;

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function withDetails(e: KilnError): KilnError {
  return e.details ? e : new KilnError(e.code, e.message, {}, { cause: e });
}

/** A failure on a VM that was acquired for the call: the invocation record names it. */
function withInstance(e: KilnError, blank: BlankInstance): KilnError {
  e.details!.vm = blank.vmId;
  e.details!.source = blank.origin;
  return e;
}

function loadFailure(g: GuestError): KilnError {
  return new KilnError('KILN_ERR_FUNCTION_LOAD', `the function's code did not load: ${g.type}: ${g.message}`, { type: g.type, message: g.message, stack: g.stack });
}

function checkName(name: string | undefined): string {
  if (!name || !FUNCTION_NAME.test(name)) {
    throw new KilnError('KILN_ERR_VALIDATION', `invalid function name ${JSON.stringify(name ?? '')}: lower-case letters, digits, ".", "_" and "-", 1–63 characters, starting with a letter or digit`, { field: 'name' });
  }
  return name;
}

function shapeOf(v: FunctionConfig): InstanceShape {
  return { vcpus: v.vcpus, memoryMib: v.memoryMib, ...(v.image ? { image: v.image } : {}) };
}

function limitsOf(v: FunctionConfig): SchedulerLimits {
  return { maxInstances: v.maxInstances, concurrency: v.concurrency, queueSize: v.queueSize, idleTimeoutMs: v.idleTimeoutS * 1000, minInstances: v.minInstances };
}

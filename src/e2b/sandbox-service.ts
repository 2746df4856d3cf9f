// Sandboxes: E2B's lifecycle on kiln's VMs. A sandbox is a clone of its template's snapshot
// (src/snapshot/templates.ts: restored, not booted) whose VM is named by the sandbox id; what
// E2B adds (template id, metadata, env vars, access token, end of life) is in SandboxStore.
// The VM's labels say the same to kiln (sandboxLabels: kind, id, template, end of life,
// metadata), so `kiln vm ls`, the dashboard and the events show a sandbox as what it is, and
// every change the SDK can make to them (setTimeout, connect) is written to both. Pause keeps
// the id and everything in the guest: the VM's vCPUs stop and its memory stays where it is;
// connect resumes it.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Daemon } from '../daemon.ts';
import { isKilnError } from '../errors.ts';
import { KIND_LABEL, validateLabels, type Labels } from '../vm/labels.ts';
import type { AgentClient } from '../guest/agent/client.ts';
import type { EgressSpec } from '../net/egress.ts';
import type { VmRecord } from '../store/store.ts';
import { BASE_RECIPE, SANDBOX_PATH, SANDBOX_USER } from './base-template.ts';
import { E2bError, notFound } from './errors.ts';
import { SandboxStore, type SandboxRecord } from './sandbox-store.ts';

/** What kilnd's envd translation answers as its version: the API level it implements. */
export const ENVD_VERSION = '0.5.7';
/** E2B's default when a create names no timeout. */
export const DEFAULT_TIMEOUT_S = 300;
/** E2B's cap for a sandbox's life from now (24 h). */
export const MAX_TIMEOUT_S = 86_400;
export const SANDBOX_VCPUS = 1;
export const SANDBOX_MEMORY_MIB = 512;

export interface CreateSandboxInput {
  templateID: string;
  timeout?: number;
  metadata?: Record<string, string>;
  envVars?: Record<string, string>;
  autoPause?: boolean;
  /** From allow_internet_access and network.allowOut/denyOut (src/e2b/control-plane.ts). */
  egress?: EgressSpec;
}

export interface GuestUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** A sandbox id: 20 lower-case alphanumerics like E2B's, so `<port>-<id>.<domain>` parses. */
export function newSandboxId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const b = randomBytes(20);
  let s = 'i';
  for (let i = 1; i < 20; i++) s += alphabet[b[i]! % alphabet.length];
  return s;
}

/** Where a sandbox's E2B metadata goes in its VM's labels: `e2b.meta.<key>`. */
export const META_LABEL_PREFIX = 'e2b.meta.';

/** The labels of a sandbox's VM: what E2B's API says about it, as kiln shows it. */
export function sandboxLabels(s: Pick<SandboxRecord, 'id' | 'templateId' | 'endAt' | 'autoPause' | 'metadata'>): Labels {
  return {
    [KIND_LABEL]: 'sandbox',
    'e2b.sandbox': s.id,
    'e2b.template': s.templateId,
    'e2b.end_at': new Date(s.endAt).toISOString(),
    'e2b.on_timeout': s.autoPause ? 'pause' : 'kill',
    ...Object.fromEntries(Object.entries(s.metadata).map(([k, v]) => [`${META_LABEL_PREFIX}${k}`, v])),
  };
}

type Listener = (sandboxId: string) => void;

export class SandboxService {
  readonly store: SandboxStore;
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly users = new Map<string, GuestUser>();
  private readonly goneListeners = new Set<Listener>();
  private readonly pauseListeners = new Set<Listener>();
  private unsubscribe: (() => void) | null = null;

  constructor(
    private readonly daemon: Daemon,
    readonly opts: { domain: string | null },
  ) {
    this.store = new SandboxStore(path.join(daemon.config.stateDir, 'e2b.db'));
  }

  /** Start-up: records whose VM is gone are dropped, the others' timeouts are armed again. */
  async start(): Promise<void> {
    // A sandbox's VM removed behind E2B's back (`kiln vm rm`, a failed guest) ends the sandbox.
    this.unsubscribe = this.daemon.bus.subscribe((e) => {
      if ((e.type !== 'vm.deleted' && !(e.type === 'vm.state' && (e.data.to === 'failed' || e.data.to === 'stopped'))) || !e.vmId) return;
      const s = this.store.list().find((x) => x.vmId === e.vmId);
      if (!s) return;
      this.disarm(s.id);
      this.store.delete(s.id);
      for (const l of this.goneListeners) l(s.id);
      if (e.type !== 'vm.deleted') void this.daemon.vms.delete(e.vmId).catch(() => {});
    });
    for (const s of this.store.list()) {
      const vm = await this.daemon.store.getVm(s.vmId);
      if (!vm || !['ready', 'paused'].includes(vm.state)) {
        if (vm) await this.daemon.vms.delete(vm.id).catch(() => {});
        this.store.delete(s.id);
        continue;
      }
      // A sandbox made before its VM carried labels (or whose labels drifted) gets them now.
      const want = sandboxLabels(s);
      if (Object.entries(want).some(([k, v]) => vm.labels?.[k] !== v)) {
        await this.daemon.vms.setLabels(vm.id, want).catch((e) => this.daemon.log.warn({ sandbox: s.id, err: (e as Error).message }, 'labelling a sandbox VM failed'));
      }
      if (s.state === 'running') this.arm(s);
    }
  }

  close(): void {
    this.unsubscribe?.();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.store.close();
  }

  onGone(l: Listener): void {
    this.goneListeners.add(l);
  }

  onPause(l: Listener): void {
    this.pauseListeners.add(l);
  }

  /** E2B template id → what kiln's template service clones: `base` is the recipe above. */
  async imageFor(templateId: string): Promise<string> {
    if (templateId === 'base') return (await this.daemon.recipes.ensure(BASE_RECIPE)).id;
    return templateId;
  }

  async create(input: CreateSandboxInput): Promise<SandboxRecord> {
    const timeout = input.timeout ?? DEFAULT_TIMEOUT_S;
    if (!Number.isInteger(timeout) || timeout < 0 || timeout > MAX_TIMEOUT_S) throw new E2bError(400, `timeout must be an integer between 0 and ${MAX_TIMEOUT_S} seconds`);
    for (const [k, v] of Object.entries({ ...input.metadata, ...input.envVars })) {
      if (typeof v !== 'string') throw new E2bError(400, `metadata and envVars values must be strings (${JSON.stringify(k)})`);
    }
    const id = newSandboxId();
    const autoPause = input.autoPause ?? false;
    const metadata = input.metadata ?? {};
    // Checked before anything is made. The VM is created with them, and gets `e2b.end_at` once
    // it runs: a sandbox's life counts from then (a first create may wait for a template build).
    let labels: Labels;
    try {
      labels = validateLabels(sandboxLabels({ id, templateId: input.templateID, endAt: Date.now() + timeout * 1000, autoPause, metadata }), { allowReserved: true });
    } catch (e) {
      throw new E2bError(400, `metadata: ${(e as Error).message.replaceAll(META_LABEL_PREFIX, '')} (kiln keeps metadata as VM labels)`);
    }
    delete labels['e2b.end_at'];
    let image: string;
    try {
      image = await this.imageFor(input.templateID);
    } catch (e) {
      throw new E2bError(500, `template ${input.templateID}: ${(e as Error).message}`);
    }
    let vm: VmRecord | null = null;
    try {
      const template = await this.daemon.templates.ensure(image, { vcpus: SANDBOX_VCPUS, memoryMib: SANDBOX_MEMORY_MIB }, { beforeSnapshot: (golden) => this.warm(golden.id) });
      // Pooled clones of it run the same before they are paused (src/snapshot/clone-pool.ts).
      if (template.snapshotId) this.daemon.snapshots.pool.warmWith(template.snapshotId, (vmId) => this.warm(vmId));
      vm = await this.daemon.templates.clone(template.id, { name: id, labels, ...(input.egress ? { egress: input.egress } : {}) });
      vm = await this.daemon.vms.waitFor(vm.id, ['ready'], this.daemon.config.bootTimeoutMs);
    } catch (e) {
      // Never a half-made sandbox: a clone that did not get ready is removed.
      const made = vm ?? (await this.daemon.store.getVm(id));
      if (made) await this.daemon.vms.delete(made.id).catch(() => {});
      if (isKilnError(e) && (e.code === 'KILN_ERR_IMAGE_NOT_FOUND' || e.code === 'KILN_ERR_TEMPLATE_NOT_FOUND')) {
        throw new E2bError(404, `template '${input.templateID}' not found`);
      }
      throw e;
    }
    const now = Date.now();
    const rec: SandboxRecord = {
      id, vmId: vm.id, templateId: input.templateID, metadata, envVars: input.envVars ?? {},
      accessToken: randomBytes(24).toString('hex'), autoPause, state: 'running',
      cpuCount: vm.vcpus, memoryMb: vm.memoryMib, startedAt: now, endAt: now + timeout * 1000,
    };
    this.store.insert(rec);
    await this.labelEnd(rec);
    this.daemon.bus.publish('sandbox.created', vm.id, { sandbox: id, template: input.templateID, metadata: rec.metadata, end_at: new Date(rec.endAt).toISOString() });
    this.arm(rec);
    return rec;
  }

  /**
   * Runs what every sandbox's first calls run (a login bash as the sandbox user, find,
   * getent). Before a template's snapshot, so their files are in the snapshot's page cache
   * and no clone reads and decompresses them again; in a pooled clone before it is paused, so
   * its emulator has translated that code before the SDK's first commands.run (under TCG the
   * largest part of a pooled create). Best effort: an image without them still works.
   */
  private async warm(vmId: string): Promise<void> {
    const agent = await this.daemon.vms.agent(vmId);
    const u = SANDBOX_USER;
    await agent.execCollect({
      argv: ['/bin/bash', '-l', '-c', `getent passwd ${u.name} >/dev/null; find / -maxdepth 0 -printf '' ; mkdir -p /tmp; true`],
      env: { PATH: SANDBOX_PATH, HOME: u.home, USER: u.name },
      cwd: '/',
      uid: u.uid,
      gid: u.gid,
      timeoutMs: 60_000,
      maxOutputBytes: 4096,
    }).catch((e) => this.daemon.log.info({ vm: vmId, err: (e as Error).message }, 'sandbox warm-up skipped'));
  }

  get(id: string): SandboxRecord {
    const s = this.store.get(id);
    if (!s) throw notFound(id);
    return s;
  }

  list(): SandboxRecord[] {
    return this.store.list();
  }

  /** The VM goes first: a sandbox that still shows up always has its VM (a failed delete can be retried). */
  async kill(id: string): Promise<void> {
    const s = this.get(id);
    this.disarm(id);
    for (const l of this.goneListeners) l(id);
    await this.daemon.vms.delete(s.vmId).catch((e) => {
      if (!(isKilnError(e) && e.code === 'KILN_ERR_VM_NOT_FOUND')) throw e;
    });
    this.store.delete(id);
    this.daemon.bus.publish('sandbox.killed', null, { sandbox: id });
  }

  async setTimeout(id: string, seconds: number): Promise<void> {
    if (!Number.isInteger(seconds) || seconds < 0 || seconds > MAX_TIMEOUT_S) throw new E2bError(400, `timeout must be an integer between 0 and ${MAX_TIMEOUT_S} seconds`);
    const s = this.get(id);
    if (s.state !== 'running') throw new E2bError(409, `sandbox "${id}" is paused`);
    s.endAt = Date.now() + seconds * 1000;
    this.store.update(id, { endAt: s.endAt });
    this.arm(s);
    await this.labelEnd(s);
  }

  /** The VM's `e2b.end_at` label follows the sandbox's end of life. */
  private async labelEnd(s: SandboxRecord): Promise<void> {
    await this.daemon.vms.setLabels(s.vmId, { 'e2b.end_at': new Date(s.endAt).toISOString() });
  }

  /** 409 when it is paused already (the SDK's pause() then returns false). */
  async pause(id: string): Promise<void> {
    const s = this.get(id);
    if (s.state === 'paused') throw new E2bError(409, `sandbox "${id}" is already paused`);
    this.disarm(id);
    for (const l of this.pauseListeners) l(id);
    await this.daemon.vms.pause(s.vmId);
    this.store.update(id, { state: 'paused' });
    this.daemon.bus.publish('sandbox.paused', s.vmId, { sandbox: id });
  }

  /** Running: its end of life moves later if `timeout` says so (201 = it was resumed). */
  async connect(id: string, timeoutS: number | undefined): Promise<{ resumed: boolean; sandbox: SandboxRecord }> {
    const s = this.get(id);
    const t = timeoutS ?? DEFAULT_TIMEOUT_S;
    if (!Number.isInteger(t) || t < 0 || t > MAX_TIMEOUT_S) throw new E2bError(400, `timeout must be an integer between 0 and ${MAX_TIMEOUT_S} seconds`);
    const endAt = Date.now() + t * 1000;
    if (s.state === 'running') {
      if (endAt > s.endAt) {
        s.endAt = endAt;
        this.store.update(id, { endAt });
        this.arm(s);
        await this.labelEnd(s);
      }
      return { resumed: false, sandbox: s };
    }
    await this.daemon.vms.resume(s.vmId);
    s.state = 'running';
    s.endAt = endAt;
    this.store.update(id, { state: 'running', endAt });
    this.arm(s);
    await this.labelEnd(s);
    this.daemon.bus.publish('sandbox.resumed', s.vmId, { sandbox: id });
    return { resumed: true, sandbox: s };
  }

  /** The guest agent of a running sandbox (envd's calls); 502 like E2B's proxy when it is not. */
  async agent(id: string): Promise<{ sandbox: SandboxRecord; vm: VmRecord; agent: AgentClient }> {
    const s = this.store.get(id);
    if (!s) throw new E2bError(502, `The sandbox ${id} was not found`);
    if (s.state === 'paused') throw new E2bError(502, `The sandbox ${id} is paused`);
    const vm = await this.daemon.vms.get(s.vmId);
    return { sandbox: s, vm, agent: await this.daemon.vms.agent(vm.id) };
  }

  /** The guest's account `name` (uid, gid, home), read from its passwd once per image. */
  async user(sandboxId: string, vm: VmRecord, agent: AgentClient, name: string): Promise<GuestUser> {
    const key = `${vm.imageId}\0${name}`;
    const known = this.users.get(key);
    if (known) return known;
    let u: GuestUser | null = null;
    if (name === 'root') u = { name, uid: 0, gid: 0, home: '/root' };
    else {
      const r = await agent.execCollect({ argv: ['getent', 'passwd', name], env: { PATH: SANDBOX_PATH }, timeoutMs: 10_000, maxOutputBytes: 4096 });
      const f = r.stdout.toString().trim().split(':');
      if (r.exitCode === 0 && f.length >= 7) u = { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
    }
    if (!u) throw new E2bError(401, `user '${name}' does not exist in sandbox ${sandboxId}`);
    this.users.set(key, u);
    return u;
  }

  /**
   * One metrics sample now, from two agent `stats` readings 200 ms apart (CPU is a rate).
   * kiln keeps no history: E2B's list of samples over time has this one entry.
   */
  async metrics(id: string) {
    const s = this.get(id);
    if (s.state !== 'running') return [];
    const agent = await this.daemon.vms.agent(s.vmId);
    const a = await agent.stats({ timeoutMs: 5_000 });
    await new Promise((r) => setTimeout(r, 200));
    const b = await agent.stats({ timeoutMs: 5_000 });
    const total = (x: typeof a) => Object.values(x.cpu).reduce((n, v) => n + v, 0);
    const busy = (x: typeof a) => total(x) - x.cpu.idle - x.cpu.iowait;
    const dt = total(b) - total(a);
    const now = Date.now();
    return [{
      timestamp: new Date(now).toISOString(),
      timestampUnix: Math.floor(now / 1000),
      cpuCount: b.ncpu,
      cpuUsedPct: dt > 0 ? Math.round(((busy(b) - busy(a)) / dt) * 10_000) / 100 : 0,
      memUsed: (b.mem.total_kb - b.mem.available_kb) * 1024,
      memTotal: b.mem.total_kb * 1024,
      memCache: Math.max(0, (b.mem.available_kb - b.mem.free_kb) * 1024),
      diskUsed: 0,
      diskTotal: 0,
    }];
  }

  /** E2B's default user for commands and files. */
  readonly defaultUser = SANDBOX_USER.name;

  private arm(s: SandboxRecord): void {
    this.disarm(s.id);
    const ms = Math.max(0, s.endAt - Date.now());
    // setTimeout's limit is ~24.8 days; sandboxes live at most 24 h.
    const t = setTimeout(() => void this.expire(s.id), ms);
    t.unref();
    this.timers.set(s.id, t);
  }

  private disarm(id: string): void {
    const t = this.timers.get(id);
    if (t) clearTimeout(t);
    this.timers.delete(id);
  }

  private async expire(id: string): Promise<void> {
    this.timers.delete(id);
    const s = this.store.get(id);
    if (!s || s.state !== 'running') return;
    // A timeout moved later since this timer was set is not an expiry.
    if (s.endAt > Date.now() + 50) return this.arm(s);
    const action = s.autoPause ? this.pause(id) : this.kill(id);
    await action.catch((e) => this.daemon.log.error({ sandbox: id, err: e }, 'ending an expired sandbox failed'));
    this.daemon.bus.publish('sandbox.expired', null, { sandbox: id, action: s.autoPause ? 'pause' : 'kill' });
  }
}

// kilnd: wires store, assets, VMM driver, VM manager and the API together. VMs outlive the
// daemon: close() lets go of them, the next start() re-attaches.
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { NO_AUTH_WARNING } from './api/auth/no-auth.ts';
import { ensureApiToken } from './api/auth/token-file.ts';
import { buildServer } from './api/server.ts';
import { HOST_CPUS, HOST_MEMORY_MIB, isLoopback, vmmMemoryOverheadMib, type KilnConfig } from './config.ts';
import { KilnError } from './errors.ts';
import { EventBus } from './events/event-bus.ts';
import { FunctionMetrics } from './functions/function-metrics.ts';
import { FunctionService } from './functions/function-service.ts';
import { ensureDefaultImage } from './image/default-image.ts';
import { ImageService } from './image/image-service.ts';
import { pullImage } from './image/oci/index.ts';
import { RecipeBuilder } from './image/recipes/debian-recipe.ts';
import { CLASSIC_RECIPE } from './image/recipes/debian-classic.ts';
import { BASE_RECIPE } from './e2b/base-template.ts';
import { RUNTIMES, runtimeRecipe } from './functions/runtimes.ts';
import { VolumeService } from './image/volume-service.ts';
import { Metrics } from './metrics/metrics.ts';
import { NetworkManager } from './net/network-manager.ts';
import { NeighbourWatch } from './net/neighbour-watch.ts';
import { AgentListener } from './guest/agent/listener.ts';
import type { AgentHub } from './vm/agent-link.ts';
import { openStore, parseStoreSpec, redactStoreUrl } from './store/open-store.ts';
import { nodeCapacity } from './cluster/capacity.ts';
import { loadNodeId } from './cluster/node-id.ts';
import { NodeMember } from './cluster/node-member.ts';
import { FenceLease } from './cluster/fence-lease.ts';
import { leaseNodeSubnet } from './cluster/node-subnet.ts';
import { Takeover } from './cluster/takeover.ts';
import { scopeStoreToNode } from './cluster/node-scoped-store.ts';
import { secureStateDir } from './store/state-permissions.ts';
import type { Store } from './store/store.ts';
import { prepareGuestAssets, type GuestAssets } from './vm/guest-assets.ts';
import { Admission } from './vm/admission.ts';
import { VmManager } from './vm/vm-manager.ts';
import { ContainerService } from './containers/container-service.ts';
import { SnapshotService } from './snapshot/snapshot-service.ts';
import { TemplateService } from './snapshot/templates.ts';
import type { TemplateProvider } from './functions/restore-source.ts';
import { decideAccelerator, type AccelDecision } from './vmm/accel-probe.ts';
import { decideBackend, type BackendDecision } from './vmm/backend-select.ts';
import type { BackendName, VmmDriver } from './vmm/driver.ts';
import { sweepCgroups } from './vmm/cgroup/cgroup.ts';
import { createDriver, decideJailer, jailerSettingsFromEnv, resolveQemuConfinement } from './vmm/registry.ts';
import { KILN_VERSION } from './version.ts';

export class Daemon {
  readonly version = KILN_VERSION;
  private app: FastifyInstance | null = null;
  private closed = false;
  /** Cluster membership when the store is shared (PostgreSQL); null on a single host. */
  cluster: NodeMember | null = null;
  /** A cluster node's fence lease, renewed at each accepted heartbeat (src/cluster/fence-lease.ts). */
  fenceLease: FenceLease | null = null;

  private constructor(
    readonly config: KilnConfig,
    readonly log: Logger,
    readonly store: Store,
    readonly bus: EventBus,
    readonly metrics: Metrics,
    readonly assets: GuestAssets,
    readonly accel: AccelDecision,
    readonly backend: BackendDecision,
    readonly driver: VmmDriver,
    readonly images: ImageService,
    readonly volumes: VolumeService,
    readonly network: NetworkManager,
    readonly agents: AgentHub,
    readonly vms: VmManager,
    /** Builds runtime and base images from Debian's archive (functions, classic VMs). */
    readonly recipes: RecipeBuilder,
    readonly containers: ContainerService,
    /** Functions: deploy, invoke, warm pools (src/functions). */
    readonly functions: FunctionService,
    /** Snapshots, restores and clones (src/snapshot); templates: golden snapshots per image. */
    readonly snapshots: SnapshotService,
    readonly templates: TemplateService,
    /** Committed vCPUs and memory against the host's capacity (src/vm/admission.ts). */
    readonly admission: Admission,
  ) {}

  static async start(config: KilnConfig, log: Logger = pino({ level: config.logLevel })): Promise<Daemon> {
    if (!isLoopback(config.listenHost) && config.auth === 'none') {
      throw new KilnError('KILN_ERR_HOST_SETUP', `refusing --no-auth on ${config.listenHost}: without a token only a loopback address may be served`);
    }
    await secureStateDir(config.stateDir);
    const apiToken = config.auth === 'none' ? undefined : await ensureApiToken(config.stateDir, config.apiToken);
    config = { ...config, apiToken };
    if (config.auth === 'none') log.warn(NO_AUTH_WARNING);
    // SQLite in the state dir unless --store names a PostgreSQL database (src/store/open-store.ts).
    const shared = await openStore(config.store, config.stateDir);
    log.info({ store: config.store ? redactStoreUrl(config.store) : 'sqlite' }, 'store opened');
    // On a shared (PostgreSQL) store this kilnd is a cluster node: its services see its own VMs.
    const nodeId = parseStoreSpec(config.store).kind === 'postgres' ? await loadNodeId(config.stateDir) : null;
    const store = nodeId ? scopeStoreToNode(shared, nodeId) : shared;
    let agents: AgentHub | null = null;
    try {
      if (nodeId) config = await nodeNetwork(config, shared, nodeId, log);
      const assets = await prepareGuestAssets(config.assetsDir, (msg) => log.info(msg), { kernelPath: config.kernelPath });
      if (assets.kernel.source === 'user') log.info({ kernel: assets.kernel.path, format: assets.kernel.format }, 'user-supplied guest kernel');
      const accel = await decideAccelerator({
        requested: config.accelerator,
        kernel: assets.kernel.path,
        initrd: assets.initramfs.path,
        cacheDir: config.assetsDir,
        canProbe: assets.kernel.format === 'bzImage' || assets.kernel.pvh === true,
        firecrackerBinary: config.firecrackerBinary,
      });
      log.info({ accelerator: accel.accelerator, reason: accel.reason }, 'accelerator chosen');
      const backend = await decideBackend({ requested: config.backend, firecrackerBinary: config.firecrackerBinary, accel });
      log.info({ backend: backend.backend, reason: backend.reason }, 'VMM backend chosen');
      // Firecracker runs under its jailer whenever one is there (KILN_FIRECRACKER_JAILER=off: never).
      const jail = backend.backend === 'firecracker' ? await decideJailer(jailerSettingsFromEnv(process.env, config.stateDir), backend.firecrackerBinary!) : undefined;
      if (jail) log.info({ jailer: jail.jailer?.binary ?? null, reason: jail.reason }, 'Firecracker confinement');
      // Confinement is decided once: every QEMU this kilnd starts gets the same (docs/security.md).
      const qemuConfinement = await resolveQemuConfinement(config.vmm, { stateDir: config.stateDir, warn: (msg) => log.warn(msg) });
      const driver = createDriver(backend.backend, { assetsDir: config.assetsDir, firecrackerBinary: backend.firecrackerBinary, qemuConfinement, jailer: jail?.jailer });
      const bus = new EventBus(store, log, {
        keepPerVm: config.guestInput.eventsKeepPerVm,
        keepTotal: config.guestInput.eventsKeepTotal,
        maxAgeMs: config.guestInput.eventsMaxAgeMs,
      });
      const metrics = new Metrics(async () => {
        const counts: Record<string, number> = {};
        for (const vm of await store.listVms()) counts[vm.state] = (counts[vm.state] ?? 0) + 1;
        return counts;
      });
      const images = new ImageService(store, bus, {
        stateDir: config.stateDir,
        limits: config.unpack,
        puller: pullImage,
        insecureRegistries: (process.env.KILN_INSECURE_REGISTRIES ?? '').split(',').filter(Boolean),
        credentialsFile: process.env.KILN_REGISTRY_AUTH_FILE || undefined,
        // A cluster node records its image copies under its id and fetches the files it lacks
        // from peers, with the cluster's token (the same on every process).
        ...(nodeId ? { nodeId, peerToken: () => apiToken ?? null } : {}),
      });
      await images.recover();
      await ensureDefaultImage(images);
      const volumes = new VolumeService(store, bus, config.stateDir, config.allowedRoots);
      // A jailed Firecracker opens its tap as the jail's uid: taps are made for it.
      const tapOwner = jail?.jailer ? { uid: jail.jailer.uid, gid: jail.jailer.gid } : undefined;
      const network = new NetworkManager({ ...config.network, ...(tapOwner ? { tapOwner } : {}) }, { store, log });
      await network.init();
      agents = await startAgentHub(config, network, log);
      const driverFor = (name: BackendName) => createDriver(name, { assetsDir: config.assetsDir, firecrackerBinary: config.firecrackerBinary, jailer: jail?.jailer, qemuConfinement });
      const recipes = new RecipeBuilder({ images, assetsDir: config.assetsDir, mirror: config.debianMirror, log });
      // Every recipe kiln has: their images are ones this node can build itself (a cluster node
      // whose peers holding one are lost), whatever first asks for them here.
      recipes.know([CLASSIC_RECIPE, BASE_RECIPE, ...await Promise.all(RUNTIMES.map(runtimeRecipe))]);
      const classicBase = () => recipes.ensure(CLASSIC_RECIPE);
      // A VM commits its guest RAM plus what its VMM may use beyond it: the same allowance its
      // cgroup gives it (src/config.ts vmmMemoryOverheadMib).
      const vmmOverheadMib = vmmMemoryOverheadMib(accel.accelerator, config.vmm.memoryOverheadMib);
      const admission = new Admission({ ...config.capacity, vmmOverheadMib }, { vcpus: HOST_CPUS, memoryMib: HOST_MEMORY_MIB }, () => store.listVms());
      metrics.trackCapacity(() => admission.report());
      const vms = new VmManager({ config, store, bus, images, volumes, driver, metrics, network, agents, log, assets, accelerator: accel.accelerator, admission, driverFor, classicBase });
      const containers = new ContainerService({ stateDir: config.stateDir, store, bus, images, vms, log });
      // Subscribed before the reconcile: re-attached consoles replay output and exits.
      containers.attach();
      await vms.reconcile();
      await bus.flush();
      await containers.reconcile();
      if (qemuConfinement.cgroups) {
        // Crash safety: cgroups of VMs whose VMM is not running under this store any more.
        const keep = new Set((await store.listVms()).filter((v) => v.pid !== null).map((v) => v.id));
        const swept = await sweepCgroups(qemuConfinement.cgroups, keep);
        if (swept.length) log.info({ cgroups: swept }, 'removed cgroups of VMs no longer running');
      }
      const snapshots = new SnapshotService({ config, store, vms, images, driver, network, assets, accelerator: accel.accelerator, bus, log, metrics, nodeId });
      await snapshots.sweep();
      const templates = new TemplateService({ config, store, vms, images, snapshots, bus, log, nodeId });
      await templates.sweep();
      await snapshots.pool.sweep();
      const functions = new FunctionService({
        store: store.functions, vms, recipes, stateDir: config.stateDir, poolSize: config.functions.poolSize,
        bootTimeoutMs: config.bootTimeoutMs, metrics: new FunctionMetrics(metrics), log, resolveImage: (ref) => images.resolveForVm(ref),
        ...(config.functions.restore ? { templates: templateProvider(templates, snapshots) } : {}),
        // A cluster node serves every function in the shared store (code included).
        ...(nodeId ? { cluster: { syncMs: config.cluster.heartbeatMs } } : {}),
      });
      await functions.start();
      // /healthz's backend_reason says how Firecracker is confined, too.
      const chosen = jail ? { ...backend, reason: `${backend.reason}; ${jail.reason}` } : backend;
      const daemon = new Daemon(config, log, store, bus, metrics, assets, accel, chosen, driver, images, volumes, network, agents, vms, recipes, containers, functions, snapshots, templates, admission);
      if (nodeId) {
        daemon.fenceLease = new FenceLease(config.stateDir);
        daemon.cluster = new NodeMember({
          store: shared, nodeId, name: config.cluster.nodeName, heartbeatMs: config.cluster.heartbeatMs, lostAfterMs: config.cluster.lostAfterMs, log,
          capacity: () => nodeCapacity({ admission, images, stateDir: config.stateDir, warm: () => functions.pool.describe(), functions: () => functions.served() }),
          publish: (type, vmId, data) => bus.publish(type, vmId, data),
          onBeat: (at) => daemon.fenceLease!.renew(at),
          fence: {
            kill: (reason) => vms.fence(reason),
            release: async (ids) => {
              await vms.unfence(ids);
              await functions.afterFence();
            },
          },
          takeover: new Takeover({
            store: shared, nodeId, log,
            leaseAddress: async (id) => (await network.lease(id))?.ip ?? null,
            start: (id) => containers.startMoved(id),
            publish: (type, vmId, data) => bus.publish(type, vmId, data),
          }),
        });
      }
      return daemon;
    } catch (e) {
      await closeAgentHub(agents);
      await shared.close();
      throw e;
    }
  }

  async listen(): Promise<string> {
    this.app = await buildServer(this, this.log);
    await this.app.listen({ host: this.config.listenHost, port: this.config.listenPort });
    const addr = this.app.server.address();
    const url = typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : String(addr);
    this.log.info({ url }, 'kilnd listening');
    // A cluster node registers once it can be reached.
    await this.cluster?.start(this.config.cluster.advertiseUrl ?? url);
    if (this.cluster && this.fenceLease) await this.startFenceWatchdog(this.cluster.fenceAfterMs);
    return url;
  }

  /**
   * The fence watchdog (src/cluster/fence-watchdog.ts): started once registration stamped the
   * lease, replacing a previous kilnd's. Left running at close: a node whose kilnd stays down
   * past the fence deadline is one the cluster counts lost, so its VMMs must go either way.
   */
  private async startFenceWatchdog(fenceAfterMs: number): Promise<void> {
    const { heartbeatMs, lostAfterMs } = this.config.cluster;
    try {
      const pid = await this.fenceLease!.startWatchdog({
        bridge: this.config.network.bridge, fenceAfterMs,
        // kilnd's own fence first while it lives; still before the others' deadline.
        aliveGraceMs: Math.min(heartbeatMs, (lostAfterMs - fenceAfterMs) / 2),
        pollMs: Math.min(heartbeatMs / 2, 250),
      }, this.log);
      this.log.info({ pid, fenceAfterMs }, 'fence watchdog started');
    } catch (e) {
      // kilnd still fences itself while it runs; only a crash would go unfenced.
      this.log.error({ err: e }, 'the fence watchdog did not start: VMMs of this node outlive a crash of kilnd');
    }
  }

  /** Stops serving; running VMs keep running and are re-attached by the next start. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.cluster?.stop();
    await this.functions.close();
    // Pooled clones are kilnd's own, not the users': a clean stop deletes them.
    await this.snapshots.pool.close();
    await this.snapshots.pool.drain();
    this.containers.close();
    await this.vms.close();
    await this.driver.release?.().catch((e) => this.log.warn({ err: e }, 'VMM driver release failed'));
    await closeAgentHub(this.agents);
    await this.app?.close();
    await this.bus.flush();
    await this.store.close();
  }
}

/**
 * A cluster node's VM subnet: its lease from the cluster range (the same one across restarts),
 * unless KILN_CIDR names one explicitly, which wins (and is not leased: keep it outside the
 * cluster range, or another node may lease it too).
 */
async function nodeNetwork(config: KilnConfig, store: Store, nodeId: string, log: Logger): Promise<KilnConfig> {
  if (config.network.cidrGiven) {
    log.info({ cidr: config.network.cidr }, 'VM subnet from KILN_CIDR (not leased from the cluster range)');
    return config;
  }
  const cidr = await leaseNodeSubnet(store, nodeId, config.cluster.cidr, config.cluster.nodeSubnetPrefix);
  log.info({ cidr, range: config.cluster.cidr }, 'VM subnet leased from the cluster range');
  return { ...config, network: { ...config.network, cidr } };
}

/** The functions layer's view of templates: find a ready one, build one, restore a clone. */
function templateProvider(templates: TemplateService, snapshots: SnapshotService): TemplateProvider {
  return {
    readySnapshot: async (image, spec) => (await templates.readyFor(image, spec))?.snapshotId ?? null,
    build: async (image, spec, beforeSnapshot) => void (await templates.ensure(image, spec, { beforeSnapshot: (golden) => beforeSnapshot(golden.id) })),
    restore: (snapshotId, input) => snapshots.restore(snapshotId, input),
  };
}

/**
 * Listens for agent pushes on the bridge address. A failure does not stop kilnd: VMs then
 * come up through the fallbacks, and the reason is logged and kept for each VM's log line.
 */
async function startAgentHub(config: KilnConfig, network: NetworkManager, log: Logger): Promise<AgentHub> {
  const host = network.subnet.gateway;
  // Guests connect while still mounting their root and say hello at ready: allow for slow boots.
  const listener = new AgentListener({ authDeadlineMs: 60_000, log: (msg, fields) => log.warn(fields ?? {}, msg) });
  const neighbours = new NeighbourWatch(network.bridge, log);
  try {
    const { port } = await listener.listenTcp(host, config.network.agentPort);
    // The one host port guests may connect to (the input policy, src/net/ruleset.ts).
    network.setAgentPort(port);
    return { listener, pushUnavailable: null, pushTarget: `${host}:${port}`, neighbours };
  } catch (e) {
    const why = `cannot listen on ${host}:${config.network.agentPort}: ${(e as Error).message}`;
    log.error({ why }, 'agent push channel unavailable; readiness falls back to neighbour-table detection');
    await listener.close();
    return { listener: null, pushUnavailable: why, pushTarget: `${host}:${config.network.agentPort}`, neighbours };
  }
}

async function closeAgentHub(hub: AgentHub | null): Promise<void> {
  hub?.neighbours.close();
  await hub?.listener?.close();
}

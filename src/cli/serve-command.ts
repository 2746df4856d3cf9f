import { Command } from 'commander';
import path from 'node:path';
import { defaultConfig, isLoopback, parseListen, type KilnConfig } from '../config.ts';
import { Daemon } from '../daemon.ts';
import pino from 'pino';
import { ApiRole } from '../cluster/api-role.ts';
import { ensureApiToken } from '../api/auth/token-file.ts';
import { PgStore } from '../store/pg/pg-store.ts';
import { parseStoreSpec, redactStoreUrl } from '../store/open-store.ts';
import { secureStateDir } from '../store/state-permissions.ts';
import { NO_AUTH_WARNING } from '../api/auth/no-auth.ts';
import { apiTokenPath } from '../sdk/api-token.ts';
import { E2B_KEY_FILE, e2bApiKey, writeE2bApiKey } from '../e2b/api-key.ts';
import { E2bServer } from '../e2b/server.ts';

export function serveCommand(): Command {
  return new Command('serve')
    .description('run kilnd in the foreground (VMs keep running when it stops)')
    .option('--state-dir <dir>', 'state directory (SQLite, VMs, images)', process.env.KILN_STATE_DIR ?? '/var/lib/kiln')
    .option('--store <sqlite|postgres://…>', 'state store: SQLite in the state dir (default) or a PostgreSQL URL (a cluster)', process.env.KILN_STORE)
    .option('--role <all|node|api>', 'cluster role on a PostgreSQL store: all (default) or node run VMs and register as a node; api places creates on nodes and forwards to them', 'all')
    .option('--node-name <name>', 'this node\'s name in the cluster (default: host name)')
    .option('--cluster-cidr <cidr>', 'cluster range each node leases its VM subnet from (a /24 each; KILN_CIDR on a node wins)', process.env.KILN_CLUSTER_CIDR)
    .option('--advertise-url <url>', 'where other kiln processes reach this one (default: the listen URL)')
    .option('--assets-dir <dir>', 'guest kernel/initramfs cache (default: <state-dir>/assets)')
    .option('--listen <host:port>', 'API address', '127.0.0.1:18080')
    .option('--accel <auto|kvm|tcg>', 'CPU accelerator', process.env.KILN_ACCEL ?? 'auto')
    .option('--backend <auto|qemu|firecracker>', 'VMM backend', process.env.KILN_BACKEND ?? 'auto')
    .option('--allowed-root <dir>', 'host directory that path-based imports may read (repeatable)', (v: string, p: string[]) => [...p, v], [])
    .option('--allowed-host <name>', 'a name clients may use in Host besides loopback and the listen address (repeatable)', (v: string, p: string[]) => [...p, v], [])
    .option('--e2b-listen <host:port>', 'also serve E2B\'s API (control plane and sandboxes) here (docs/e2b.md)', process.env.KILN_E2B_LISTEN)
    .option('--e2b-domain <domain>', 'the domain sandboxes are reached under as <port>-<id>.<domain>', process.env.KILN_E2B_DOMAIN)
    .option('--e2b-advertise-url <url>', 'where the API role reaches this node\'s E2B listener (default: --e2b-listen, a wildcard address replaced by the advertised host)', process.env.KILN_E2B_ADVERTISE_URL)
    .option('--no-auth', 'serve the API without a token (loopback only; every local user then controls kilnd)')
    .action(async (o) => {
      const base = defaultConfig({ ...process.env, KILN_STATE_DIR: o.stateDir });
      const { host, port } = parseListen(o.listen);
      if (!['auto', 'kvm', 'tcg'].includes(o.accel)) throw new Error('--accel must be auto, kvm or tcg');
      if (!['auto', 'qemu', 'firecracker'].includes(o.backend)) throw new Error('--backend must be auto, qemu or firecracker');
      const store = parseStoreSpec(o.store);
      if (!['all', 'node', 'api'].includes(o.role)) throw new Error('--role must be all, node or api');
      if (o.role !== 'all' && store.kind !== 'postgres') throw new Error(`--role ${o.role} needs a shared store: --store postgres://…`);
      const config = {
        ...base,
        store: o.store ?? null,
        cluster: { ...base.cluster, role: o.role, nodeName: o.nodeName ?? base.cluster.nodeName, advertiseUrl: o.advertiseUrl ?? base.cluster.advertiseUrl, cidr: o.clusterCidr || base.cluster.cidr },
        assetsDir: o.assetsDir ? path.resolve(o.assetsDir) : base.assetsDir,
        listenHost: host,
        listenPort: port,
        accelerator: o.accel,
        backend: o.backend,
        allowedRoots: [...base.allowedRoots, ...o.allowedRoot.map((p: string) => path.resolve(p))],
        allowedHosts: [...base.allowedHosts, ...o.allowedHost],
        auth: o.auth === false ? ('none' as const) : ('token' as const),
      };
      if (o.role === 'api') {
        if (config.auth === 'none') throw new Error('--role api serves other hosts: it needs the API token (no --no-auth)');
        await serveApiRole(config, (store as { url: string }).url, o.e2bListen ? parseListen(o.e2bListen) : null);
        return;
      }
      if (config.auth === 'none') process.stderr.write(`WARNING: ${NO_AUTH_WARNING}\n`);
      const e2bListen = o.e2bListen ? parseListen(o.e2bListen) : null;
      // Without a token any E2B API key is taken: like the API itself, loopback only then.
      if (e2bListen && config.auth === 'none' && !isLoopback(e2bListen.host)) throw new Error(`refusing --no-auth with --e2b-listen on ${e2bListen.host}: without a token only a loopback address may be served`);
      const daemon = await Daemon.start(config);
      // E2B compatibility (src/e2b): its own listener. Up before kilnd serves, so that a cluster
      // node registers with it (the API role forwards sandboxes there: src/cluster/api-e2b.ts).
      const e2b = e2bListen ? new E2bServer(daemon, { ...e2bListen, domain: o.e2bDomain || null }) : null;
      if (e2b) {
        const e2bUrl = await e2b.listen();
        const key = e2b.apiKey ? `API key in ${path.join(config.stateDir, E2B_KEY_FILE)}` : 'any API key';
        process.stderr.write(`kiln e2b server on ${e2bUrl} (${key})\n`);
        daemon.cluster?.advertiseE2b(o.e2bAdvertiseUrl || advertisedE2bUrl(e2bUrl, config.cluster.advertiseUrl ?? `http://${host}:${port}`));
      }
      const url = await daemon.listen();
      const auth = config.auth === 'none' ? 'NO AUTH' : `token in ${apiTokenPath(config.stateDir)}`;
      process.stderr.write(`kilnd ready on ${url} (backend ${daemon.driver.name}: ${daemon.backend.reason}; ${daemon.accel.accelerator}: ${daemon.accel.reason}; ${auth})\n`);
      const stop = (sig: string) => {
        daemon.log.info({ signal: sig }, 'shutting down; VMs keep running');
        void (e2b?.close() ?? Promise.resolve()).then(() => daemon.close()).then(() => process.exit(0));
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}

/**
 * Where the API role reaches a node's E2B listener: the listener's URL, unless it listens on a
 * wildcard address (0.0.0.0, ::), which is no address to connect to: then the host the node
 * advertises for its API, with the E2B listener's port.
 */
export function advertisedE2bUrl(listenUrl: string, advertised: string): string {
  const u = new URL(listenUrl);
  if (u.hostname !== '0.0.0.0' && u.hostname !== '[::]') return listenUrl;
  u.hostname = new URL(advertised).hostname;
  return u.origin;
}

/** `--role api`: no VMM, no host setup; the store, the token and an HTTP listener (and E2B's). */
async function serveApiRole(config: KilnConfig, storeUrl: string, e2b: { host: string; port: number } | null): Promise<void> {
  const log = pino({ level: config.logLevel });
  await secureStateDir(config.stateDir);
  const token = await ensureApiToken(config.stateDir, config.apiToken);
  const store = await PgStore.open(storeUrl);
  const k = Number(process.env.KILN_PLACEMENT_K ?? 2);
  if (!Number.isInteger(k) || k < 1) throw new Error('KILN_PLACEMENT_K must be a positive integer');
  const api = await ApiRole.start({ store, token, listenHost: config.listenHost, listenPort: config.listenPort, log, k, ...(e2b ? { e2b } : {}) });
  if (api.e2bUrl) {
    // The cluster's E2B API key: the one every node derives from the shared token.
    const file = await writeE2bApiKey(config.stateDir, e2bApiKey(token));
    process.stderr.write(`kiln e2b server on ${api.e2bUrl} (API key in ${file})\n`);
  }
  process.stderr.write(`kilnd ready on ${api.url} (role api; store ${redactStoreUrl(storeUrl)}; token in ${apiTokenPath(config.stateDir)})\n`);
  const stop = () => void api.close().then(() => store.close()).then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

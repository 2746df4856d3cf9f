import { Command } from 'commander';
import path from 'node:path';
import { defaultConfig, parseListen } from '../config.ts';
import { Daemon } from '../daemon.ts';
import { parseStoreSpec } from '../store/open-store.ts';
import { NO_AUTH_WARNING } from '../api/auth/no-auth.ts';
import { apiTokenPath } from '../sdk/api-token.ts';

export function serveCommand(): Command {
  return new Command('serve')
    .description('run kilnd in the foreground (VMs keep running when it stops)')
    .option('--state-dir <dir>', 'state directory (SQLite, VMs, images)', process.env.KILN_STATE_DIR ?? '/var/lib/kiln')
    .option('--store <sqlite|postgres://…>', 'state store: SQLite in the state dir (default) or a PostgreSQL URL (a cluster)', process.env.KILN_STORE)
    .option('--role <all|node>', 'cluster role on a PostgreSQL store: all (default) or node; both run VMs and register as a node', 'all')
    .option('--node-name <name>', 'this node\'s name in the cluster (default: host name)')
    .option('--advertise-url <url>', 'where other kiln processes reach this one (default: the listen URL)')
    .option('--assets-dir <dir>', 'guest kernel/initramfs cache (default: <state-dir>/assets)')
    .option('--listen <host:port>', 'API address', '127.0.0.1:18080')
    .option('--accel <auto|kvm|tcg>', 'CPU accelerator', process.env.KILN_ACCEL ?? 'auto')
    .option('--backend <auto|qemu|firecracker>', 'VMM backend', process.env.KILN_BACKEND ?? 'auto')
    .option('--allowed-root <dir>', 'host directory that path-based imports may read (repeatable)', (v: string, p: string[]) => [...p, v], [])
    .option('--allowed-host <name>', 'a name clients may use in Host besides loopback and the listen address (repeatable)', (v: string, p: string[]) => [...p, v], [])
    .option('--no-auth', 'serve the API without a token (loopback only; every local user then controls kilnd)')
    .action(async (o) => {
      const base = defaultConfig({ ...process.env, KILN_STATE_DIR: o.stateDir });
      const { host, port } = parseListen(o.listen);
      if (!['auto', 'kvm', 'tcg'].includes(o.accel)) throw new Error('--accel must be auto, kvm or tcg');
      if (!['auto', 'qemu', 'firecracker'].includes(o.backend)) throw new Error('--backend must be auto, qemu or firecracker');
      const store = parseStoreSpec(o.store);
      if (!['all', 'node'].includes(o.role)) throw new Error('--role must be all or node');
      if (o.role === 'node' && store.kind !== 'postgres') throw new Error('--role node needs a shared store: --store postgres://…');
      const config = {
        ...base,
        store: o.store ?? null,
        cluster: { ...base.cluster, role: o.role, nodeName: o.nodeName ?? base.cluster.nodeName, advertiseUrl: o.advertiseUrl ?? base.cluster.advertiseUrl },
        assetsDir: o.assetsDir ? path.resolve(o.assetsDir) : base.assetsDir,
        listenHost: host,
        listenPort: port,
        accelerator: o.accel,
        backend: o.backend,
        allowedRoots: [...base.allowedRoots, ...o.allowedRoot.map((p: string) => path.resolve(p))],
        allowedHosts: [...base.allowedHosts, ...o.allowedHost],
        auth: o.auth === false ? ('none' as const) : ('token' as const),
      };
      if (config.auth === 'none') process.stderr.write(`WARNING: ${NO_AUTH_WARNING}\n`);
      const daemon = await Daemon.start(config);
      const url = await daemon.listen();
      const auth = config.auth === 'none' ? 'NO AUTH' : `token in ${apiTokenPath(config.stateDir)}`;
      process.stderr.write(`kilnd ready on ${url} (backend ${daemon.driver.name}: ${daemon.backend.reason}; ${daemon.accel.accelerator}: ${daemon.accel.reason}; ${auth})\n`);
      const stop = (sig: string) => {
        daemon.log.info({ signal: sig }, 'shutting down; VMs keep running');
        void daemon.close().then(() => process.exit(0));
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
}

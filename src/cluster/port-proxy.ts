// Published ports through the API role. A VM's published TCP port is DNATed by its node on
// the node's own addresses (src/net/ruleset.ts), so a client that only knows the cluster's
// API address could not reach it. Each API process therefore listens on every TCP host port
// published by a VM on a ready node and pipes each connection to that node's address, same
// port: the node's DNAT does the rest. The set of ports is read from the shared store every
// `syncMs` (ports are unique per protocol across the cluster, so two VMs never want one
// listener). UDP is not proxied (no connection to pipe; documented).
//
// A port this host cannot listen on (another process holds it) is reported, not fatal: the
// rest keep working and the next sync tries again.
import net from 'node:net';
import type { Logger } from 'pino';
import type { NodeRecord, Store } from '../store/store.ts';

export interface ProxiedPort {
  port: number;
  vm: string;
  node: string;
  /** Listening, or why not (EADDRINUSE, …). */
  state: 'listening' | 'failed';
  error?: string;
}

interface Listener {
  server: net.Server;
  vm: string;
  nodeId: string;
  target: { host: string; port: number };
  state: ProxiedPort['state'];
  error?: string;
  sockets: Set<net.Socket>;
}

/** Where a node's published ports are reached: the host of its advertised URL. */
export function nodeHost(node: Pick<NodeRecord, 'url'>): string {
  return new URL(node.url).hostname.replace(/^\[(.*)\]$/, '$1');
}

export class PortProxy {
  private readonly listeners = new Map<number, Listener>();
  private timer: NodeJS.Timeout | null = null;
  private syncing: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly o: { store: Store; listenHost: string; syncMs: number; log: Logger },
  ) {}

  async start(): Promise<void> {
    await this.sync();
    this.timer = setInterval(() => void this.sync().catch((e) => this.o.log.warn({ err: e }, 'published-port sync failed')), this.o.syncMs);
    this.timer.unref();
  }

  /** One pass: listen on the ports now published on ready nodes, stop those no longer are. */
  sync(): Promise<void> {
    this.syncing = this.syncing.catch(() => {}).then(() => this.syncOnce());
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    if (this.closed) return;
    const nodes = new Map((await this.o.store.listNodes()).filter((n) => n.state === 'ready').map((n) => [n.id, n]));
    const want = new Map<number, { vm: string; node: NodeRecord; guestPort: number }>();
    for (const vm of await this.o.store.listVms()) {
      const node = vm.nodeId ? nodes.get(vm.nodeId) : undefined;
      if (!node || vm.state === 'stopped' || vm.state === 'failed' || vm.state === 'lost') continue;
      for (const p of vm.ports) if (p.proto === 'tcp') want.set(p.hostPort, { vm: vm.id, node, guestPort: p.guestPort });
    }
    for (const [port, l] of this.listeners) {
      const w = want.get(port);
      if (!w || w.vm !== l.vm || w.node.id !== l.nodeId) await this.unlisten(port);
    }
    for (const [port, w] of want) {
      const cur = this.listeners.get(port);
      // A port that failed (held by another process) is retried at every sync.
      if (cur?.state === 'listening') continue;
      if (cur) await this.unlisten(port);
      await this.listen(port, w.vm, w.node);
    }
  }

  private async listen(port: number, vm: string, node: NodeRecord): Promise<void> {
    const l: Listener = { server: net.createServer(), vm, nodeId: node.id, target: { host: nodeHost(node), port }, state: 'listening', sockets: new Set() };
    l.server.on('connection', (client) => this.pipe(l, client));
    this.listeners.set(port, l);
    await new Promise<void>((resolve) => {
      l.server.once('error', (e: NodeJS.ErrnoException) => {
        l.state = 'failed';
        l.error = e.code ?? e.message;
        this.o.log.warn({ port, vm, node: node.name, err: l.error }, 'cannot listen on a published port');
        resolve();
      });
      l.server.listen({ host: this.o.listenHost, port }, () => resolve());
    });
  }

  private pipe(l: Listener, client: net.Socket): void {
    const upstream = net.connect(l.target);
    l.sockets.add(client);
    l.sockets.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      l.sockets.delete(client);
      l.sockets.delete(upstream);
    };
    // Either side failing or closing ends both: no half-open pair is left behind.
    for (const s of [client, upstream]) {
      s.on('error', done);
      s.on('close', done);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  private async unlisten(port: number): Promise<void> {
    const l = this.listeners.get(port);
    if (!l) return;
    this.listeners.delete(port);
    for (const s of l.sockets) s.destroy();
    if (l.state === 'listening') await new Promise<void>((r) => l.server.close(() => r()));
  }

  report(): ProxiedPort[] {
    return [...this.listeners.entries()]
      .map(([port, l]) => ({ port, vm: l.vm, node: l.nodeId, state: l.state, ...(l.error ? { error: l.error } : {}) }))
      .sort((a, b) => a.port - b.port);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.syncing.catch(() => {});
    for (const port of [...this.listeners.keys()]) await this.unlisten(port);
  }
}

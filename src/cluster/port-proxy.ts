// Published ports through the API role. A VM's published port is DNATed by its node on the
// node's own addresses (src/net/ruleset.ts), so a client that only knows the cluster's API
// address could not reach it. Each API process therefore listens on every host port published
// by a VM on a ready node and relays it to that node's address, same port: the node's DNAT does
// the rest. TCP: each connection piped. UDP: a datagram relay (udp-relay.ts), one upstream
// socket per client address, so the node's answers find their way back. The set of ports is
// read from the shared store every `syncMs` (ports are unique per protocol across the cluster,
// so two VMs never want one listener).
//
// A port this host cannot listen on (another process holds it) is reported, not fatal: the
// rest keep working and the next sync tries again.
import net from 'node:net';
import type { Logger } from 'pino';
import type { NodeRecord, Store } from '../store/store.ts';
import { UdpRelay, type UdpRelayLimits } from './udp-relay.ts';

type Proto = 'tcp' | 'udp';

export interface ProxiedPort {
  proto: Proto;
  port: number;
  vm: string;
  node: string;
  /** Listening, or why not (EADDRINUSE, …). */
  state: 'listening' | 'failed';
  error?: string;
  /** UDP: client addresses with a live relay session now. */
  sessions?: number;
}

interface Listener {
  proto: Proto;
  /** TCP: the listening server; UDP: the relay. */
  server: net.Server | null;
  relay: UdpRelay | null;
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
  /** By `proto/port`. */
  private readonly listeners = new Map<string, Listener>();
  private timer: NodeJS.Timeout | null = null;
  private syncing: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly o: { store: Store; listenHost: string; syncMs: number; log: Logger; udp?: Partial<UdpRelayLimits> },
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
    const want = new Map<string, { proto: Proto; port: number; vm: string; node: NodeRecord }>();
    for (const vm of await this.o.store.listVms()) {
      const node = vm.nodeId ? nodes.get(vm.nodeId) : undefined;
      if (!node || vm.state === 'stopped' || vm.state === 'failed' || vm.state === 'lost') continue;
      for (const p of vm.ports) want.set(`${p.proto}/${p.hostPort}`, { proto: p.proto, port: p.hostPort, vm: vm.id, node });
    }
    for (const [key, l] of this.listeners) {
      const w = want.get(key);
      if (!w || w.vm !== l.vm || w.node.id !== l.nodeId) await this.unlisten(key);
    }
    for (const [key, w] of want) {
      const cur = this.listeners.get(key);
      // A port that failed (held by another process) is retried at every sync.
      if (cur?.state === 'listening') continue;
      if (cur) await this.unlisten(key);
      await this.listen(w.proto, w.port, w.vm, w.node);
    }
  }

  private async listen(proto: Proto, port: number, vm: string, node: NodeRecord): Promise<void> {
    const target = { host: nodeHost(node), port };
    const l: Listener = { proto, server: null, relay: null, vm, nodeId: node.id, target, state: 'listening', sockets: new Set() };
    this.listeners.set(`${proto}/${port}`, l);
    const failed = (e: NodeJS.ErrnoException) => {
      l.state = 'failed';
      l.error = e.code ?? e.message;
      this.o.log.warn({ proto, port, vm, node: node.name, err: l.error }, 'cannot listen on a published port');
    };
    if (proto === 'udp') {
      l.relay = new UdpRelay({ host: this.o.listenHost, port }, target, this.o.udp ?? {}, this.o.log);
      await l.relay.start().catch(failed);
      return;
    }
    const server = net.createServer();
    l.server = server;
    server.on('connection', (client) => this.pipe(l, client));
    await new Promise<void>((resolve) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        failed(e);
        resolve();
      });
      server.listen({ host: this.o.listenHost, port }, () => resolve());
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

  private async unlisten(key: string): Promise<void> {
    const l = this.listeners.get(key);
    if (!l) return;
    this.listeners.delete(key);
    for (const s of l.sockets) s.destroy();
    await l.relay?.close();
    const server = l.server;
    if (server && l.state === 'listening') await new Promise<void>((r) => server.close(() => r()));
  }

  report(): ProxiedPort[] {
    return [...this.listeners.values()]
      .map((l) => ({
        proto: l.proto, port: l.target.port, vm: l.vm, node: l.nodeId, state: l.state,
        ...(l.error ? { error: l.error } : {}),
        ...(l.relay ? { sessions: l.relay.sessions } : {}),
      }))
      .sort((a, b) => a.port - b.port || a.proto.localeCompare(b.proto));
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.syncing.catch(() => {});
    for (const key of [...this.listeners.keys()]) await this.unlisten(key);
  }
}

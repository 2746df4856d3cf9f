// A UDP published port relayed by the API role (port-proxy.ts) to the node that runs its VM.
// UDP has no connection to pipe, so the relay keeps one session per client address (ip:port):
// its own upstream socket, connected to the node's address and the same port. A datagram from
// the client goes out on its session's socket; whatever comes back on that socket goes to that
// client, from the published port. This is what a NAT's connection tracking does, in user
// space: the node's DNAT sees one flow per client, and answers cannot be crossed.
//
// Sessions are bounded: one idle longer than `idleMs` is closed (its socket freed), and at most
// `maxSessions` live at once; a new client beyond that evicts the one idle longest (a flood of
// spoofed sources cannot exhaust the API host's sockets, only churn its own sessions).
import dgram from 'node:dgram';
import net from 'node:net';
import type { Logger } from 'pino';

export interface UdpRelayLimits {
  /** A session without a datagram either way for this long is closed (default 60 s, as conntrack's UDP stream timeout is 120 s and its unreplied one 30 s). */
  idleMs: number;
  /** Live sessions per published port (default 1024). */
  maxSessions: number;
}

const DEFAULTS: UdpRelayLimits = { idleMs: 60_000, maxSessions: 1024 };

interface Session {
  upstream: dgram.Socket;
  lastActive: number;
  /** Datagrams sent before the upstream socket was connected. */
  pending: Buffer[] | null;
}

const familyOf = (host: string): 'udp4' | 'udp6' => (net.isIPv6(host) ? 'udp6' : 'udp4');

export class UdpRelay {
  private readonly socket: dgram.Socket;
  /** By client `address|port`; Map order is least recently active first (touch() re-inserts). */
  private readonly byClient = new Map<string, Session>();
  private readonly limits: UdpRelayLimits;
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private readonly listen: { host: string; port: number },
    private readonly target: { host: string; port: number },
    limits: Partial<UdpRelayLimits>,
    private readonly log: Logger,
  ) {
    this.limits = { ...DEFAULTS, ...limits };
    this.socket = dgram.createSocket({ type: familyOf(listen.host) });
    this.socket.on('message', (msg, rinfo) => this.fromClient(msg, rinfo));
  }

  /** Binds the published port; rejects with the bind error (EADDRINUSE, …). */
  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.socket.once('error', onError);
      this.socket.bind({ address: this.listen.host, port: this.listen.port, exclusive: true }, () => {
        this.socket.off('error', onError);
        // After the bind, an error (ICMP unreachable surfaced on some systems) must not crash the API.
        this.socket.on('error', (e) => this.log.warn({ port: this.listen.port, err: e }, 'UDP relay socket error'));
        resolve();
      });
    });
    this.sweeper = setInterval(() => this.expire(Date.now()), Math.max(50, Math.min(this.limits.idleMs / 2, 5_000)));
    this.sweeper.unref();
  }

  /** Live sessions now. */
  get sessions(): number {
    return this.byClient.size;
  }

  private fromClient(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (this.closed) return;
    const key = `${rinfo.address}|${rinfo.port}`;
    let s = this.byClient.get(key);
    if (s) this.touch(key, s);
    else s = this.open(key, rinfo);
    if (s.pending) s.pending.push(msg);
    else s.upstream.send(msg);
  }

  private open(key: string, client: dgram.RemoteInfo): Session {
    while (this.byClient.size >= this.limits.maxSessions) {
      const [oldest] = this.byClient.keys();
      if (oldest === undefined) break;
      this.end(oldest);
    }
    const upstream = dgram.createSocket({ type: familyOf(this.target.host) });
    const s: Session = { upstream, lastActive: Date.now(), pending: [] };
    this.byClient.set(key, s);
    upstream.on('message', (reply) => {
      if (this.byClient.get(key) !== s) return;
      this.touch(key, s);
      this.socket.send(reply, client.port, client.address);
    });
    // A node that is not there (ICMP port unreachable on a connected socket) ends the session;
    // the client's next datagram opens a new one.
    upstream.on('error', (e) => {
      this.log.debug({ port: this.listen.port, client: key, err: e }, 'UDP relay session failed');
      this.end(key);
    });
    upstream.connect(this.target.port, this.target.host, () => {
      const queued = s.pending ?? [];
      s.pending = null;
      for (const m of queued) upstream.send(m);
    });
    return s;
  }

  private touch(key: string, s: Session): void {
    s.lastActive = Date.now();
    this.byClient.delete(key);
    this.byClient.set(key, s);
  }

  private end(key: string): void {
    const s = this.byClient.get(key);
    if (!s) return;
    this.byClient.delete(key);
    try {
      s.upstream.close();
    } catch {
      // closed already
    }
  }

  /** Closes sessions idle longer than the limit (the least recently active come first). */
  expire(now: number): void {
    for (const [key, s] of this.byClient) {
      if (now - s.lastActive < this.limits.idleMs) break;
      this.end(key);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    for (const key of [...this.byClient.keys()]) this.end(key);
    await new Promise<void>((r) => {
      try {
        this.socket.close(() => r());
      } catch {
        r();
      }
    });
  }
}

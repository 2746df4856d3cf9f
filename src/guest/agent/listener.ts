// kilnd's end of the agents' control channels: guests connect here (TCP on the bridge
// address, or Firecracker's `<vsock uds>_<port>` Unix socket), answer kilnd's challenge with
// a hello proving they hold their VM's token (the token itself never travels, so a listener
// impersonating kilnd learns nothing that opens a session), and later report the workload's exit. Every peer is untrusted:
// it must authenticate within a deadline, frames are size-capped and schema-checked, the
// bytes a connection may send are bounded, and any violation closes it and is reported to
// the VM's onProblem. Nothing a peer does can throw out of here or hold the event loop.
import { createHash } from 'node:crypto';
import { helloProof, newNonce, proofMatches } from './auth.ts';
import fs from 'node:fs/promises';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { AgentProtocolError, encodeFrame, encodeKv, FrameDecoder, FrameType, PROTOCOL_VERSION } from './frame.ts';
import { HelloMessage, parseMessage, TimeMessage, WorkloadExitMessage, JSON_MAX } from './messages.ts';

export interface AgentProblem {
  reason: AgentProtocolError['reason'] | 'proto_version';
  message: string;
  remote: string;
}

export interface AgentCallbacks {
  /** The agent is up: sessions can be opened. Called again after each reconnect. */
  onHello(hello: HelloMessage, info: { remote: string; channel: 'tcp' | 'unix'; receivedAt: bigint }): void;
  onExit(exit: WorkloadExitMessage): void;
  onProblem(problem: AgentProblem): void;
  /** The authenticated control connection closed (guest powered off, or a network blip). */
  onDisconnect?(): void;
}

export interface AgentListenerOptions {
  /** A peer must send a valid hello within this. */
  authDeadlineMs?: number;
  /** Open connections, authenticated or not, across all listeners. */
  maxConnections?: number;
  /** What one control connection may send in total (v1 guests send two small messages). */
  maxBytesPerConnection?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

interface Expected {
  vmId: string;
  token: string;
  tokenHash: Buffer;
  callbacks: AgentCallbacks;
  /** Source address of the VM's NIC: lets unauthenticated misbehaviour be attributed. */
  ip?: string;
  active?: net.Socket;
  /** Answers to `time` requests on the control channel, oldest first. */
  timeWaiters: ((m: TimeMessage) => void)[];
}

const hashToken = (token: string) => createHash('sha256').update(token, 'utf8').digest();

export class AgentListener {
  private readonly byToken = new Map<string, Expected>();
  private readonly byVm = new Map<string, Expected>();
  private readonly servers = new Set<net.Server>();
  private readonly sockets = new Set<net.Socket>();
  private readonly opts: Required<Omit<AgentListenerOptions, 'log'>> & Pick<AgentListenerOptions, 'log'>;

  constructor(opts: AgentListenerOptions = {}) {
    this.opts = {
      authDeadlineMs: opts.authDeadlineMs ?? 5000,
      maxConnections: opts.maxConnections ?? 1024,
      maxBytesPerConnection: opts.maxBytesPerConnection ?? 4 * JSON_MAX,
      log: opts.log,
    };
  }

  /** Listens on TCP; returns the bound port (pass 0 for an ephemeral one). */
  async listenTcp(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = net.createServer((s) => this.accept(s, 'tcp'));
    await listen(server, (cb) => server.listen({ host, port, exclusive: true }, cb));
    this.servers.add(server);
    const a = server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /**
   * Listens on a Unix socket (Firecracker hybrid vsock: `<uds>_<port>`). One per VM, so even
   * a peer that never authenticates is attributed to `vmId`. Returns a function that stops it.
   */
  async listenUnix(socketPath: string, vmId?: string): Promise<() => Promise<void>> {
    await fs.rm(socketPath, { force: true });
    const server = net.createServer((s) => this.accept(s, 'unix', vmId));
    await listen(server, (cb) => server.listen(socketPath, cb));
    // A jailed Firecracker (an unprivileged uid) dials it: connecting needs write permission.
    // Its directory (the VM's, or its jail's vsock dir) is what keeps others out.
    await fs.chmod(socketPath, 0o666);
    this.servers.add(server);
    return async () => {
      this.servers.delete(server);
      await new Promise<void>((r) => server.close(() => r()));
    };
  }

  /** Registers a VM whose agent will connect with `token`. Replaces an earlier registration. */
  expect(vmId: string, token: string, callbacks: AgentCallbacks, opts: { ip?: string } = {}): void {
    this.forget(vmId);
    const e: Expected = { vmId, token, tokenHash: hashToken(token), callbacks, ip: opts.ip, timeWaiters: [] };
    this.byVm.set(vmId, e);
    this.byToken.set(e.tokenHash.toString('hex'), e);
  }

  forget(vmId: string): void {
    const e = this.byVm.get(vmId);
    if (!e) return;
    this.byVm.delete(vmId);
    this.byToken.delete(e.tokenHash.toString('hex'));
    e.active?.destroy();
  }

  /**
   * Asks the guest's PID 1 for its clocks over the authenticated control connection (no
   * connect, no fork on the guest side: a short, symmetric round trip). Null when there is
   * no such connection or no answer within `timeoutMs`.
   */
  async time(vmId: string, timeoutMs = 2000): Promise<{ sentAt: number; receivedAt: number; time: TimeMessage } | null> {
    const e = this.byVm.get(vmId);
    const socket = e?.active;
    if (!e || !socket) return null;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        e.timeWaiters = e.timeWaiters.filter((w) => w !== waiter);
        resolve(null);
      }, timeoutMs);
      const waiter = (time: TimeMessage) => {
        clearTimeout(timer);
        resolve({ sentAt, receivedAt: performance.now(), time });
      };
      e.timeWaiters.push(waiter);
      const sentAt = performance.now();
      socket.write(encodeFrame(FrameType.TIME));
    });
  }

  /** Whether `vmId`'s agent currently holds an authenticated control connection. */
  connected(vmId: string): boolean {
    return Boolean(this.byVm.get(vmId)?.active);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.servers].map((srv) => new Promise<void>((r) => srv.close(() => r()))));
    this.servers.clear();
  }

  private attribute(remote: string, vmId: string | undefined): Expected | undefined {
    if (vmId) return this.byVm.get(vmId);
    for (const e of this.byVm.values()) if (e.ip && e.ip === remote) return e;
    return undefined;
  }

  private safe(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.opts.log?.(`agent listener: ${what} callback threw`, { err: String(err) });
    }
  }

  private accept(socket: net.Socket, channel: 'tcp' | 'unix', unixVmId?: string): void {
    const remote = channel === 'tcp' ? (socket.remoteAddress ?? '?').replace(/^::ffff:/, '') : `unix:${unixVmId ?? '?'}`;
    if (this.sockets.size >= this.opts.maxConnections) {
      this.opts.log?.('agent listener: too many connections, refusing one', { remote });
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.setNoDelay(true);
    const decoder = FrameDecoder.forGuest(JSON_MAX);
    let owner: Expected | undefined;
    let received = 0;
    let done = false;
    const hostNonce = newNonce();
    socket.write(encodeFrame(FrameType.CHALLENGE, encodeKv([['proto', PROTOCOL_VERSION], ['nonce', hostNonce.toString('hex')]])));

    const cut = (err: AgentProtocolError | { reason: 'proto_version'; message: string }) => {
      if (done) return;
      done = true;
      socket.destroy();
      const target = owner ?? this.attribute(remote, unixVmId);
      this.opts.log?.('agent listener: cut off a peer', { remote, reason: err.reason, message: err.message, vm: target?.vmId });
      if (target) this.safe('onProblem', () => target.callbacks.onProblem({ reason: err.reason, message: err.message, remote }));
    };
    const timer = setTimeout(
      () => cut(new AgentProtocolError('deadline', `no valid hello within ${this.opts.authDeadlineMs} ms`)),
      this.opts.authDeadlineMs,
    );
    timer.unref();

    socket.on('data', (chunk: Buffer) => {
      if (done) return;
      received += chunk.length;
      if (received > this.opts.maxBytesPerConnection) {
        cut(new AgentProtocolError('excess', `sent more than ${this.opts.maxBytesPerConnection} bytes on the control channel`));
        return;
      }
      const { frames, error } = decoder.push(chunk);
      for (const f of frames) {
        if (done) return;
        if (f.type !== FrameType.JSON) {
          cut(new AgentProtocolError('unexpected', `frame type 0x${f.type.toString(16)} on the control channel`));
          return;
        }
        if (!owner) {
          const hello = parseMessage(f.payload, HelloMessage);
          if (hello instanceof AgentProtocolError) return cut(hello);
          const e = this.byToken.get(hello.key_id);
          if (!e || !proofMatches(helloProof(e.token, hostNonce, Buffer.from(hello.nonce, 'hex')), hello.proof)) {
            return cut(new AgentProtocolError('bad_token', 'hello without a valid proof of a key some VM holds'));
          }
          if (hello.proto !== PROTOCOL_VERSION) {
            owner = e;
            return cut({ reason: 'proto_version', message: `agent speaks protocol ${hello.proto}; kilnd speaks ${PROTOCOL_VERSION}` });
          }
          clearTimeout(timer);
          owner = e;
          if (e.active && e.active !== socket) e.active.destroy();
          e.active = socket;
          const receivedAt = process.hrtime.bigint();
          this.safe('onHello', () => e.callbacks.onHello(hello, { remote, channel, receivedAt }));
          continue;
        }
        const msg = parseMessage(f.payload, WorkloadExitMessage, TimeMessage);
        if (msg instanceof AgentProtocolError) return cut(msg);
        if (msg.type === 'time') {
          const w = owner.timeWaiters.shift();
          if (!w) return cut(new AgentProtocolError('unexpected', 'a time answer nobody asked for'));
          w(msg);
          continue;
        }
        const exit = msg;
        const o = owner;
        this.safe('onExit', () => o.callbacks.onExit(exit));
        // Closing tells the guest it may power off now.
        done = true;
        socket.end();
        return;
      }
      if (error) cut(error);
    });
    socket.on('error', () => {});
    socket.on('end', () => {
      const err = decoder.end();
      if (err) cut(err);
      socket.end();
    });
    socket.on('close', () => {
      clearTimeout(timer);
      this.sockets.delete(socket);
      if (owner?.active === socket) {
        owner.active = undefined;
        const o = owner;
        if (o.callbacks.onDisconnect) this.safe('onDisconnect', () => o.callbacks.onDisconnect!());
      }
    });
  }
}

function listen(server: net.Server, start: (cb: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    start(() => {
      server.off('error', reject);
      server.on('error', () => {});
      resolve();
    });
  });
}

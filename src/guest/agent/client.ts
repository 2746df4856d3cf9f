// kilnd's end of agent sessions: one connection per operation to the guest's agent (TCP to
// <vm ip>:<agent port>, or Firecracker hybrid vsock). TCP gives each operation its own flow
// control, so a 100 MB exec output and a status call never queue behind each other.
// Guest answers are validated like anything else from the guest; every wait has a deadline.
import net from 'node:net';
import { Readable, Writable } from 'node:stream';
import { KilnError } from '../../errors.ts';
import { connectVsock } from '../../vmm/firecracker/vsock.ts';
import { AgentProtocolError, encodeFrame, encodeKv, FRAME_MAX, FrameDecoder, FrameType, PROTOCOL_VERSION, type Frame } from './frame.ts';
import { guestSessionProof, hostSessionProof, newNonce, proofMatches } from './auth.ts';
import {
  ChallengeMessage,
  DoneMessage,
  ErrorMessage,
  ExecExitMessage,
  FileMessage,
  LogsMessage,
  parseMessage,
  ReadyMessage,
  StartedMessage,
  StatusMessage,
  StatsMessage,
  TimeMessage,
  IdentityMessage,
  type StatusMessage as Status,
  type StatsMessage as Stats,
  type TimeMessage as Time,
} from './messages.ts';
import type { Static, TSchema } from 'typebox';

export type AgentTarget =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'vsock'; udsPath: string; port: number };

export interface AgentClientOptions {
  /** Connecting plus the guest's first answer. */
  connectTimeoutMs?: number;
  /** Default deadline for whole non-exec operations (status, time, shutdown, logs). */
  opTimeoutMs?: number;
}

export interface OpOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

export interface ExecRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
  /** Enforced by the guest: the process group is killed (SIGKILL) when it passes. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ExecResult {
  exitCode: number | null;
  signal: number | null;
  timedOut: boolean;
}

/** Chunk size for data the host sends: well below FRAME_MAX so frames stay cheap to buffer. */
const SEND_CHUNK = 256 * 1024;
/** Frames decoded but not yet consumed before the socket is paused. */
const READ_AHEAD = 32;
/** How long past its own timeout the guest gets to report an exec's end. */
const EXEC_GRACE_MS = 10_000;

const protocolError = (e: AgentProtocolError, what: string) =>
  new KilnError('KILN_ERR_AGENT_PROTOCOL', `guest agent: ${e.message} (${what})`, { reason: e.reason });

function guestError(e: Static<typeof ErrorMessage>, what: string): KilnError {
  const details = { guest_code: e.code, errno: e.errno };
  if (e.code === 'not_found') return new KilnError('KILN_ERR_GUEST_PATH_NOT_FOUND', `${what}: ${e.message}`, details);
  if (e.code === 'bad_token' || e.code === 'bad_proto') return new KilnError('KILN_ERR_AGENT_PROTOCOL', `${what}: ${e.message}`, details);
  return new KilnError('KILN_ERR_GUEST_OP_FAILED', `${what}: ${e.message}`, details);
}

/** Pull-style frame reader with read-ahead backpressure on the socket. */
class FrameReader {
  private readonly frames: Frame[] = [];
  private failure: KilnError | undefined;
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly decoder = FrameDecoder.forGuest(FRAME_MAX);

  constructor(
    readonly socket: net.Socket,
    private readonly what: string,
  ) {
    socket.on('data', (chunk: Buffer) => {
      const { frames, error } = this.decoder.push(chunk);
      this.frames.push(...frames);
      if (error) this.fail(protocolError(error, what));
      if (this.frames.length >= READ_AHEAD) socket.pause();
      this.notify();
    });
    socket.on('end', () => {
      const err = this.decoder.end();
      if (err) this.fail(protocolError(err, what));
      this.closed = true;
      this.notify();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.fail(new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `guest agent connection failed: ${e.code ?? e.message} (${what})`));
    });
    socket.on('close', () => {
      this.closed = true;
      this.notify();
    });
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  fail(err: KilnError): void {
    this.failure ??= err;
    this.socket.destroy();
    this.notify();
  }

  /** The next frame; rejects on close, protocol error, deadline (ms since now) or abort. */
  async next(deadlineMs: number | undefined, signal?: AbortSignal): Promise<Frame> {
    for (;;) {
      const f = this.frames.shift();
      if (f) {
        if (this.frames.length < READ_AHEAD / 2 && this.socket.isPaused()) this.socket.resume();
        return f;
      }
      if (this.failure) throw this.failure;
      if (this.closed) throw new KilnError('KILN_ERR_AGENT_PROTOCOL', `guest agent closed the session early (${this.what})`);
      if (this.socket.isPaused()) this.socket.resume();
      await new Promise<void>((resolve) => {
        let timer: NodeJS.Timeout | undefined;
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          this.wake = undefined;
          resolve();
        };
        const onAbort = () => {
          this.fail(new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `${this.what}: aborted`, { aborted: true }));
          done();
        };
        if (deadlineMs !== undefined) {
          timer = setTimeout(() => {
            this.fail(new KilnError('KILN_ERR_AGENT_TIMEOUT', `guest agent did not answer within ${deadlineMs} ms (${this.what})`));
            done();
          }, Math.max(0, deadlineMs));
        }
        if (signal?.aborted) return onAbort();
        signal?.addEventListener('abort', onAbort, { once: true });
        this.wake = done;
      });
    }
  }

  async json<S extends TSchema>(deadlineMs: number | undefined, signal: AbortSignal | undefined, schema: S): Promise<Static<S>> {
    const f = await this.next(deadlineMs, signal);
    if (f.type !== FrameType.JSON) {
      const err = protocolError(new AgentProtocolError('unexpected', `frame type 0x${f.type.toString(16)} where a message was due`), this.what);
      this.fail(err);
      throw err;
    }
    const msg = parseMessage(f.payload, schema, ErrorMessage);
    if (msg instanceof AgentProtocolError) {
      const err = protocolError(msg, this.what);
      this.fail(err);
      throw err;
    }
    if (isError(msg)) {
      this.socket.destroy();
      throw guestError(msg, this.what);
    }
    return msg as Static<S>;
  }
}

/** Writes with backpressure: resolves once the socket will take more. */
function send(socket: net.Socket, frame: Buffer): Promise<void> {
  if (socket.write(frame)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      socket.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      socket.off('drain', onDrain);
      reject(new KilnError('KILN_ERR_AGENT_UNAVAILABLE', 'guest agent connection closed while sending'));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

export class ExecHandle {
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable;
  readonly started: Promise<{ pid: number }>;
  readonly result: Promise<ExecResult>;
  private socket: net.Socket | undefined;

  constructor(run: (h: ExecHandle) => { started: Promise<{ pid: number }>; result: Promise<ExecResult> }) {
    let resumeReader: (() => void) | undefined;
    const onRead = () => {
      const r = resumeReader;
      resumeReader = undefined;
      r?.();
    };
    this.stdout = new Readable({ read: onRead, highWaterMark: 1 << 20 });
    this.stderr = new Readable({ read: onRead, highWaterMark: 1 << 20 });
    // A failed session destroys both with its error; that must reach readers, never crash kilnd.
    this.stdout.on('error', () => {});
    this.stderr.on('error', () => {});
    this.waitForReader = () => new Promise<void>((r) => (resumeReader = r));
    const pending: { chunk: Buffer; cb: (e?: Error | null) => void }[] = [];
    this.stdin = new Writable({
      highWaterMark: SEND_CHUNK,
      write: (chunk: Buffer, _enc, cb) => {
        if (!this.socket) return pending.push({ chunk, cb });
        this.sendStdin(chunk).then(() => cb(), cb);
      },
      final: (cb) => {
        const finish = () => (this.socket ? send(this.socket, encodeFrame(FrameType.EOF)).then(() => cb(), cb) : setImmediate(finish));
        finish();
      },
    });
    this.stdin.on('error', () => {});
    this.flushPending = () => {
      for (const p of pending.splice(0)) this.sendStdin(p.chunk).then(() => p.cb(), p.cb);
    };
    const r = run(this);
    this.started = r.started;
    this.result = r.result;
    // Rejections are delivered to whoever awaits; never as unhandled ones.
    this.started.catch(() => {});
    this.result.catch(() => {});
  }

  /** Internal: set by AgentClient.exec once the session is open. */
  attach(socket: net.Socket): void {
    this.socket = socket;
    this.flushPending();
  }

  readonly waitForReader: () => Promise<void>;
  private readonly flushPending: () => void;

  private async sendStdin(chunk: Buffer): Promise<void> {
    for (let off = 0; off < chunk.length; off += SEND_CHUNK) {
      await send(this.socket!, encodeFrame(FrameType.STDIN, chunk.subarray(off, off + SEND_CHUNK)));
    }
  }

  /** Forwards a signal to the process group (e.g. 2 for SIGINT, 15 for SIGTERM). */
  kill(signal: number): void {
    if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw new KilnError('KILN_ERR_VALIDATION', `bad signal ${signal}`);
    if (this.socket && !this.socket.destroyed) this.socket.write(encodeFrame(FrameType.SIGNAL, encodeKv([['signal', signal]])));
  }
}

export class AgentClient {
  private readonly connectTimeoutMs: number;
  private readonly opTimeoutMs: number;

  constructor(
    private readonly target: AgentTarget,
    private readonly token: string,
    opts: AgentClientOptions = {},
  ) {
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5000;
    this.opTimeoutMs = opts.opTimeoutMs ?? 30_000;
  }

  private async connect(signal?: AbortSignal): Promise<net.Socket> {
    const t = this.target;
    if (t.kind === 'vsock') {
      try {
        return (await connectVsock(t.udsPath, t.port, { signal, timeoutMs: this.connectTimeoutMs })).socket;
      } catch (e) {
        throw new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `cannot reach the guest agent over vsock: ${(e as Error).message}`, undefined, { cause: e });
      }
    }
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host: t.host, port: t.port });
      const fail = (err: KilnError) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        socket.destroy();
        reject(err);
      };
      const onAbort = () => fail(new KilnError('KILN_ERR_AGENT_UNAVAILABLE', 'connect to the guest agent aborted', { aborted: true }));
      const timer = setTimeout(
        () => fail(new KilnError('KILN_ERR_AGENT_TIMEOUT', `cannot connect to the guest agent at ${t.host}:${t.port} within ${this.connectTimeoutMs} ms`)),
        this.connectTimeoutMs,
      );
      socket.once('error', (e: NodeJS.ErrnoException) =>
        fail(new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `cannot connect to the guest agent at ${t.host}:${t.port}: ${e.code ?? e.message}`)),
      );
      socket.once('connect', () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        resolve(socket);
      });
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Opens a session: challenge first (nothing secret), the guest's proof of this VM's key
   * checked in constant time, and only then the request (argv, env, file names, a clone's new
   * token), bound to both nonces by kilnd's own proof. A peer that is not this VM's agent
   * (another VM claiming its address, a host process on its port) learns a random nonce.
   */
  private async open(op: string, extra: [string, string | number][], what: string, signal?: AbortSignal): Promise<FrameReader> {
    const socket = await this.connect(signal);
    const reader = new FrameReader(socket, what);
    const hostNonce = newNonce();
    socket.write(encodeFrame(FrameType.CHALLENGE, encodeKv([['proto', PROTOCOL_VERSION], ['nonce', hostNonce.toString('hex')]])));
    let answer: ChallengeMessage;
    try {
      answer = await reader.json(this.connectTimeoutMs, signal, ChallengeMessage);
    } catch (e) {
      reader.socket.destroy();
      throw e;
    }
    const guestNonce = Buffer.from(answer.nonce, 'hex');
    if (answer.proto !== PROTOCOL_VERSION || !proofMatches(guestSessionProof(this.token, hostNonce, guestNonce), answer.proof)) {
      const err = new KilnError(
        'KILN_ERR_AGENT_PROTOCOL',
        `the peer at the agent address did not prove it holds this VM's key; nothing was sent (${what})`,
        { reason: 'bad_proof' },
      );
      reader.fail(err);
      throw err;
    }
    const request = encodeKv([['proto', PROTOCOL_VERSION], ['op', op], ...extra]);
    const proof = hostSessionProof(this.token, hostNonce, guestNonce, request);
    socket.write(encodeFrame(FrameType.OPEN, Buffer.concat([Buffer.from(`mac=${proof.toString('hex')}\0`), request])));
    return reader;
  }

  private async simple<S extends TSchema>(op: string, extra: [string, string | number][], schema: S, o: OpOptions): Promise<Static<S>> {
    const reader = await this.open(op, extra, op, o.signal);
    try {
      return await reader.json(o.timeoutMs ?? this.opTimeoutMs, o.signal, schema);
    } finally {
      reader.socket.destroy();
    }
  }

  status(o: OpOptions = {}): Promise<Status> {
    return this.simple('status', [], StatusMessage, o);
  }

  /** CPU tick and memory counters of the guest and its workload (docs/agent-protocol.md). */
  stats(o: OpOptions = {}): Promise<Stats> {
    return this.simple('stats', [], StatsMessage, o);
  }

  time(o: OpOptions = {}): Promise<Time> {
    return this.simple('time', [], TimeMessage, o);
  }

  /**
   * Gives a restored clone its own identity (docs/agent-protocol.md, `identity`): hostname,
   * a new agent token (this client's token stops working; the guest re-handshakes on the
   * control channel with the new one), env for later execs, RNG reseed from `entropy`,
   * the wall clock, and an ARP flush.
   */
  identity(
    id: { hostname: string; token: string; env?: Record<string, string>; entropy: Buffer; realtimeUs?: number },
    o: OpOptions = {},
  ): Promise<IdentityMessage> {
    const extra: [string, string | number][] = [
      ['hostname', id.hostname],
      ['new_token', id.token],
      ['entropy', id.entropy.toString('hex')],
      ['realtime_us', Math.round(id.realtimeUs ?? Date.now() * 1000)],
      ...Object.entries(id.env ?? {}).map(([k, v]) => ['env', `${k}=${v}`] as [string, string]),
    ];
    return this.simple('identity', extra, IdentityMessage, o);
  }

  /** Graceful: the guest stops its workload as on `@kiln:stop`, then powers off. */
  async shutdown(graceMs?: number, o: OpOptions = {}): Promise<void> {
    await this.simple('shutdown', graceMs === undefined ? [] : [['grace_ms', Math.max(0, Math.round(graceMs))]], DoneMessage, o);
  }

  /** The tail (up to 256 KiB) of the workload's output as the guest saw it. */
  async logs(o: OpOptions = {}): Promise<{ total: number; data: Buffer }> {
    const reader = await this.open('logs', [], 'logs', o.signal);
    const deadline = Date.now() + (o.timeoutMs ?? this.opTimeoutMs);
    try {
      const head = await reader.json(deadline - Date.now(), o.signal, LogsMessage);
      const parts: Buffer[] = [];
      let got = 0;
      for (;;) {
        const f = await reader.next(deadline - Date.now(), o.signal);
        if (f.type === FrameType.JSON) {
          const done = parseMessage(f.payload, DoneMessage);
          if (done instanceof AgentProtocolError) throw protocolError(done, 'logs');
          break;
        }
        if (f.type !== FrameType.DATA || (got += f.payload.length) > head.bytes) {
          throw protocolError(new AgentProtocolError('unexpected', 'logs data beyond what was announced'), 'logs');
        }
        parts.push(f.payload);
      }
      return { total: head.total, data: Buffer.concat(parts) };
    } finally {
      reader.socket.destroy();
    }
  }

  /** Writes `data` to `path` in the guest, atomically (temp file + rename). */
  async put(
    path: string,
    data: Buffer | AsyncIterable<Buffer | Uint8Array | string>,
    o: OpOptions & { mode?: number; uid?: number; gid?: number; mkdirs?: boolean } = {},
  ): Promise<{ bytes: number }> {
    const extra: [string, string | number][] = [['path', path]];
    if (o.mode !== undefined) extra.push(['mode', o.mode]);
    if (o.uid !== undefined) extra.push(['uid', o.uid]);
    if (o.gid !== undefined) extra.push(['gid', o.gid]);
    if (o.mkdirs) extra.push(['mkdirs', '1']);
    const reader = await this.open('put', extra, `put ${path}`, o.signal);
    const idle = o.timeoutMs ?? this.opTimeoutMs;
    try {
      await reader.json(this.connectTimeoutMs, o.signal, ReadyMessage);
      const sendChunk = async (b: Buffer) => {
        for (let off = 0; off < b.length; off += SEND_CHUNK) {
          if (o.signal?.aborted) throw new KilnError('KILN_ERR_AGENT_UNAVAILABLE', `put ${path}: aborted`, { aborted: true });
          await send(reader.socket, encodeFrame(FrameType.DATA, b.subarray(off, off + SEND_CHUNK)));
        }
      };
      if (Buffer.isBuffer(data)) await sendChunk(data);
      else for await (const c of data) await sendChunk(typeof c === 'string' ? Buffer.from(c) : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
      reader.socket.write(encodeFrame(FrameType.EOF));
      const done = await reader.json(idle, o.signal, DoneMessage);
      return { bytes: done.bytes ?? 0 };
    } finally {
      reader.socket.destroy();
    }
  }

  /** Streams `path` out of the guest. `timeoutMs` bounds each wait for the next chunk. */
  async get(path: string, o: OpOptions = {}): Promise<{ size: number; mode: number; stream: Readable }> {
    const reader = await this.open('get', [['path', path]], `get ${path}`, o.signal);
    const idle = o.timeoutMs ?? this.opTimeoutMs;
    let head: Static<typeof FileMessage>;
    try {
      head = await reader.json(this.connectTimeoutMs, o.signal, FileMessage);
    } catch (e) {
      reader.socket.destroy();
      throw e;
    }
    let got = 0;
    const stream = new Readable({
      highWaterMark: 1 << 20,
      read: () => {
        void (async () => {
          try {
            for (;;) {
              const f = await reader.next(idle, o.signal);
              if (f.type === FrameType.DATA) {
                got += f.payload.length;
                if (got > head.size) throw protocolError(new AgentProtocolError('unexpected', `more than the announced ${head.size} bytes`), `get ${path}`);
                if (!stream.push(f.payload)) return;
                continue;
              }
              const m = f.type === FrameType.JSON ? parseMessage(f.payload, DoneMessage, ErrorMessage) : null;
              if (!m || m instanceof AgentProtocolError) throw protocolError(m ?? new AgentProtocolError('unexpected', 'bad frame'), `get ${path}`);
              if (isError(m)) throw guestError(m, `get ${path}`);
              if (got !== head.size) throw new KilnError('KILN_ERR_GUEST_OP_FAILED', `get ${path}: file changed while reading (${got} of ${head.size} bytes)`);
              reader.socket.destroy();
              stream.push(null);
              return;
            }
          } catch (e) {
            reader.socket.destroy();
            stream.destroy(e as Error);
          }
        })();
      },
      destroy: (err, cb) => {
        reader.socket.destroy();
        cb(err);
      },
    });
    stream.on('error', () => {}); // delivered to readers; never an uncaught exception
    return { size: head.size, mode: head.mode, stream };
  }

  /** Reads a whole file; refuses files above `maxBytes`. */
  async getBuffer(path: string, o: OpOptions & { maxBytes?: number } = {}): Promise<Buffer> {
    const { size, stream } = await this.get(path, o);
    if (o.maxBytes !== undefined && size > o.maxBytes) {
      stream.destroy();
      throw new KilnError('KILN_ERR_VALIDATION', `${path} is ${size} bytes; the limit here is ${o.maxBytes}`);
    }
    const parts: Buffer[] = [];
    for await (const c of stream) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  /** Starts a process; stream its output from `stdout`/`stderr`, feed `stdin`, await `result`. */
  exec(req: ExecRequest): ExecHandle {
    if (req.argv.length === 0) throw new KilnError('KILN_ERR_VALIDATION', 'exec needs a command');
    const extra: [string, string | number][] = req.argv.map((a) => ['argv', a]);
    for (const [k, v] of Object.entries(req.env ?? {})) {
      if (!k || k.includes('=')) throw new KilnError('KILN_ERR_VALIDATION', `bad environment variable name ${JSON.stringify(k)}`);
      extra.push(['env', `${k}=${v}`]);
    }
    if (req.cwd !== undefined) extra.push(['cwd', req.cwd]);
    if (req.uid !== undefined) extra.push(['uid', req.uid]);
    if (req.gid !== undefined) extra.push(['gid', req.gid]);
    if (req.timeoutMs !== undefined) extra.push(['timeout_ms', Math.max(1, Math.round(req.timeoutMs))]);
    for (const [, v] of extra) {
      if (String(v).includes('\0')) throw new KilnError('KILN_ERR_VALIDATION', 'exec arguments cannot contain NUL bytes');
    }
    const what = `exec ${req.argv[0]}`;
    return new ExecHandle((h) => {
      let resolveStarted!: (v: { pid: number }) => void;
      let rejectStarted!: (e: unknown) => void;
      const started = new Promise<{ pid: number }>((res, rej) => ((resolveStarted = res), (rejectStarted = rej)));
      const result = (async (): Promise<ExecResult> => {
        let reader: FrameReader | undefined;
        try {
          reader = await this.open('exec', extra, what, req.signal);
          const s = await reader.json(this.connectTimeoutMs, req.signal, StartedMessage);
          h.attach(reader.socket);
          resolveStarted({ pid: s.pid });
          // Without a guest-side timeout an exec may run for ever; the caller aborts it.
          const hardDeadline = req.timeoutMs === undefined ? undefined : Date.now() + req.timeoutMs + EXEC_GRACE_MS;
          for (;;) {
            const f = await reader.next(hardDeadline === undefined ? undefined : hardDeadline - Date.now(), req.signal);
            if (f.type === FrameType.STDOUT || f.type === FrameType.STDERR) {
              const out = f.type === FrameType.STDOUT ? h.stdout : h.stderr;
              if (!out.push(f.payload)) await Promise.race([h.waitForReader(), destroyed(out)]);
              continue;
            }
            if (f.type !== FrameType.JSON) throw protocolError(new AgentProtocolError('unexpected', `frame type 0x${f.type.toString(16)} in exec`), what);
            const m = parseMessage(f.payload, ExecExitMessage, ErrorMessage);
            if (m instanceof AgentProtocolError) throw protocolError(m, what);
            if (isError(m)) throw guestError(m, what);
            const x = m as Static<typeof ExecExitMessage>;
            if ((x.code === undefined) === (x.signal === undefined)) throw protocolError(new AgentProtocolError('schema', 'exit needs exactly one of code and signal'), what);
            h.stdout.push(null);
            h.stderr.push(null);
            return { exitCode: x.code ?? null, signal: x.signal ?? null, timedOut: x.timed_out };
          }
        } catch (e) {
          rejectStarted(e);
          h.stdout.destroy(e as Error);
          h.stderr.destroy(e as Error);
          h.stdin.destroy();
          throw e;
        } finally {
          reader?.socket.destroy();
        }
      })();
      return { started, result };
    });
  }

  /** exec with stdin from a buffer and output collected, each stream capped at `maxOutputBytes`. */
  async execCollect(
    req: ExecRequest & { stdin?: Buffer | string; maxOutputBytes?: number },
  ): Promise<ExecResult & { stdout: Buffer; stderr: Buffer; truncated: boolean }> {
    const max = req.maxOutputBytes ?? 16 * 1024 * 1024;
    const h = this.exec(req);
    let truncated = false;
    const collect = async (r: Readable) => {
      const parts: Buffer[] = [];
      let n = 0;
      for await (const c of r) {
        const b = c as Buffer;
        if (n < max) parts.push(b.subarray(0, max - n));
        if (n + b.length > max) truncated = true;
        n += b.length;
      }
      return Buffer.concat(parts);
    };
    const out = collect(h.stdout).catch(() => Buffer.alloc(0));
    const err = collect(h.stderr).catch(() => Buffer.alloc(0));
    h.stdin.end(req.stdin ?? Buffer.alloc(0));
    const res = await h.result;
    return { ...res, stdout: await out, stderr: await err, truncated };
  }
}

function isError(m: unknown): m is Static<typeof ErrorMessage> {
  return (m as { type?: unknown }).type === 'error';
}

function destroyed(r: Readable): Promise<void> {
  return new Promise((resolve) => (r.destroyed ? resolve() : r.once('close', () => resolve())));
}

// envd's process.Process on kiln's agent: each started process is one agent exec session
// held by kilnd (stdin, signals and output travel over it), so its life is the process's, not
// the Start stream's: a client that goes away (a background command) leaves it running, and
// Connect subscribes again by pid. Pausing a sandbox freezes the guest with the sessions open;
// after a resume the same processes carry on.
import { finished } from 'node:stream/promises';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { ExecHandle } from '../../guest/agent/client.ts';
import { isKilnError } from '../../errors.ts';
import { Process, Signal, type ProcessConfig, type ProcessSelector, type ProcessEvent } from '../gen/process/process_pb.ts';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { ProcessEventSchema } from '../gen/process/process_pb.ts';
import { AsyncQueue } from './async-queue.ts';
import { resolvePath, userEnv } from './guest-fs.ts';
import type { Caller } from './caller.ts';

type EventInit = MessageInitShape<typeof ProcessEventSchema>;

interface Proc {
  pid: number;
  tag?: string;
  config: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string };
  handle: ExecHandle;
  subscribers: Set<AsyncQueue<EventInit>>;
  stdinOpen: boolean;
  /** Runs on a pseudo-terminal: its output is `pty` data, its input `pty` input. */
  pty: boolean;
}

/** POSIX shell quoting: one word whatever the string holds. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A command on a PTY, without a PTY operation in kiln's agent: util-linux `script` (in every
 * Debian image, package bsdutils) runs it on a new pseudo-terminal of the given size and
 * relays between that terminal and its own stdin/stdout, which are the agent session's.
 */
export function ptyArgv(argv: string[], size: { cols: number; rows: number }): string[] {
  const inner = `stty rows ${size.rows} cols ${size.cols} 2>/dev/null; exec ${argv.map(shellQuote).join(' ')}`;
  return ['script', '-q', '-f', '-e', '-c', inner, '/dev/null'];
}

/** Keepalives while a stream is quiet; the SDK asks for them every 50 s (Keepalive-Ping-Interval). */
const DEFAULT_KEEPALIVE_MS = 30_000;

export function keepaliveMs(ctx: HandlerContext): number {
  const asked = Number(ctx.requestHeader.get('keepalive-ping-interval'));
  return Number.isFinite(asked) && asked > 0 ? Math.min(asked * 1000, DEFAULT_KEEPALIVE_MS) : DEFAULT_KEEPALIVE_MS;
}

/** kiln errors from the agent as Connect codes (the SDK maps those to its error classes). */
export function connectErrorFrom(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (isKilnError(e)) {
    const code = e.code === 'KILN_ERR_GUEST_PATH_NOT_FOUND' ? Code.NotFound
      : e.code === 'KILN_ERR_AGENT_UNAVAILABLE' || e.code === 'KILN_ERR_INVALID_STATE' ? Code.Unavailable
      : e.code === 'KILN_ERR_VALIDATION' ? Code.InvalidArgument
      : Code.Internal;
    return new ConnectError(`${e.code}: ${e.message}`, code);
  }
  const status = (e as { status?: number }).status;
  if (status === 401) return new ConnectError((e as Error).message, Code.Unauthenticated);
  if (status === 502) return new ConnectError((e as Error).message, Code.Unavailable);
  if (status === 400) return new ConnectError((e as Error).message, Code.InvalidArgument);
  return new ConnectError((e as Error).message ?? String(e), Code.Internal);
}

/** The processes of one sandbox, by pid. */
export class ProcessTable {
  readonly procs = new Map<number, Proc>();

  find(sel: ProcessSelector | undefined): Proc {
    const s = sel?.selector;
    let p: Proc | undefined;
    if (s?.case === 'pid') p = this.procs.get(s.value);
    else if (s?.case === 'tag') p = [...this.procs.values()].find((x) => x.tag === s.value);
    else throw new ConnectError('a process selector (pid or tag) is required', Code.InvalidArgument);
    if (!p) throw new ConnectError(`process with ${s.case} ${s.value} not found`, Code.NotFound);
    return p;
  }

  /** The sandbox is gone: every session is closed (its guest processes die with the VM). */
  closeAll(): void {
    for (const p of this.procs.values()) {
      p.handle.stdin.destroy();
      for (const q of p.subscribers) q.end(new ConnectError('the sandbox was killed', Code.Unavailable));
    }
    this.procs.clear();
  }
}

function configOf(c: ProcessConfig | undefined): Proc['config'] {
  if (!c?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
  return { cmd: c.cmd, args: [...c.args], envs: { ...c.envs }, ...(c.cwd !== undefined ? { cwd: c.cwd } : {}) };
}

function endEvent(r: { exitCode: number | null; signal: number | null } | null, error?: string): EventInit {
  if (!r) return { event: { case: 'end', value: { exitCode: -1, exited: false, status: 'error', error: error ?? 'the process session failed' } } };
  if (r.signal !== null) {
    const name = r.signal === 9 ? 'killed' : r.signal === 15 ? 'terminated' : `signal ${r.signal}`;
    return { event: { case: 'end', value: { exitCode: -1, exited: false, status: `signal: ${name}` } } };
  }
  return { event: { case: 'end', value: { exitCode: r.exitCode ?? -1, exited: true, status: `exit status ${r.exitCode}` } } };
}

export function processService(tableFor: (ctx: HandlerContext) => ProcessTable, callerFor: (ctx: HandlerContext) => Promise<Caller>): Partial<ServiceImpl<typeof Process>> {
  const caller = async (ctx: HandlerContext) => {
    try {
      return await callerFor(ctx);
    } catch (e) {
      throw connectErrorFrom(e);
    }
  };

  return {
    async list(_req, ctx) {
      await caller(ctx);
      const t = tableFor(ctx);
      return {
        processes: [...t.procs.values()].map((p) => ({
          pid: p.pid,
          ...(p.tag !== undefined ? { tag: p.tag } : {}),
          config: { cmd: p.config.cmd, args: p.config.args, envs: p.config.envs, ...(p.config.cwd !== undefined ? { cwd: p.config.cwd } : {}) },
        })),
      };
    },

    async *start(req, ctx) {
      const c = await caller(ctx);
      const config = configOf(req.process);
      const table = tableFor(ctx);
      const cwd = resolvePath(config.cwd ?? c.user.home, c.user);
      const pty = req.pty ? { cols: req.pty.size?.cols || 80, rows: req.pty.size?.rows || 24 } : null;
      const handle = c.agent.exec({
        argv: pty ? ptyArgv([config.cmd, ...config.args], pty) : [config.cmd, ...config.args],
        env: userEnv(c.user, { ...(pty ? { TERM: 'xterm-256color', SHELL: '/bin/sh' } : {}), ...c.sandbox.envVars, ...config.envs }),
        cwd,
        uid: c.user.uid,
        gid: c.user.gid,
      });
      let pid: number;
      try {
        pid = (await handle.started).pid;
      } catch (e) {
        const ke = connectErrorFrom(e);
        // A command that cannot be exec'd is envd's "failed to start" (an error, not an exit).
        throw ke.code === Code.Internal ? new ConnectError(ke.rawMessage, Code.InvalidArgument) : ke;
      }
      const first = new AsyncQueue<EventInit>();
      const proc: Proc = { pid, config, handle, subscribers: new Set([first]), stdinOpen: pty !== null || req.stdin !== false, pty: pty !== null, ...(req.tag !== undefined ? { tag: req.tag } : {}) };
      table.procs.set(pid, proc);
      if (!pty && req.stdin === false) handle.stdin.end();
      const fan = (ev: EventInit) => {
        for (const q of proc.subscribers) q.push(ev);
      };
      handle.stdout.on('data', (b: Buffer) => fan({ event: { case: 'data', value: { output: { case: pty ? 'pty' : 'stdout', value: b } } } }));
      handle.stderr.on('data', (b: Buffer) => fan({ event: { case: 'data', value: { output: { case: 'stderr', value: b } } } }));
      // The end event goes out after the last data event: both output streams are drained
      // (their 'data' events are emitted after the exec's result is known).
      const drained = Promise.all([finished(handle.stdout).catch(() => {}), finished(handle.stderr).catch(() => {})]);
      handle.result.then(async (r) => (await drained, r), async (e) => { await drained; throw e; }).then(
        (r) => {
          fan(endEvent(r));
          for (const q of proc.subscribers) q.end();
        },
        (e) => {
          fan(endEvent(null, (e as Error).message));
          for (const q of proc.subscribers) q.end();
        },
      ).finally(() => table.procs.delete(pid));
      yield { event: { event: { case: 'start', value: { pid } } } };
      try {
        for await (const ev of first.drain(ctx.signal, keepaliveMs(ctx), () => ({ event: { case: 'keepalive', value: {} } }))) yield { event: ev };
      } finally {
        proc.subscribers.delete(first);
      }
    },

    async *connect(req, ctx) {
      await caller(ctx);
      const proc = tableFor(ctx).find(req.process);
      const q = new AsyncQueue<EventInit>();
      proc.subscribers.add(q);
      try {
        yield { event: { event: { case: 'start', value: { pid: proc.pid } } } };
        for await (const ev of q.drain(ctx.signal, keepaliveMs(ctx), () => ({ event: { case: 'keepalive', value: {} } }))) yield { event: ev };
      } finally {
        proc.subscribers.delete(q);
      }
    },

    async sendInput(req, ctx) {
      await caller(ctx);
      const proc = tableFor(ctx).find(req.process);
      const input = req.input?.input;
      if (input?.case === 'pty' && !proc.pty) throw new ConnectError(`process ${proc.pid} has no PTY`, Code.FailedPrecondition);
      if (input?.case === 'stdin' && proc.pty) throw new ConnectError(`process ${proc.pid} has a PTY: send input.pty`, Code.FailedPrecondition);
      if (input?.case !== 'stdin' && input?.case !== 'pty') throw new ConnectError('input.stdin or input.pty is required', Code.InvalidArgument);
      if (!proc.stdinOpen) throw new ConnectError(`process ${proc.pid}'s stdin is closed`, Code.FailedPrecondition);
      await new Promise<void>((resolve, reject) => proc.handle.stdin.write(Buffer.from(input.value), (e) => (e ? reject(connectErrorFrom(e)) : resolve())));
      return {};
    },

    async streamInput(reqs, ctx) {
      await caller(ctx);
      let proc: Proc | null = null;
      for await (const r of reqs) {
        if (r.event.case === 'start') proc = tableFor(ctx).find(r.event.value.process);
        else if (r.event.case === 'data') {
          if (!proc) throw new ConnectError('the first message must select the process', Code.InvalidArgument);
          const input = r.event.value.input?.input;
          if (input?.case === 'stdin' || input?.case === 'pty') proc.handle.stdin.write(Buffer.from(input.value));
        }
      }
      return {};
    },

    async closeStdin(req, ctx) {
      await caller(ctx);
      const proc = tableFor(ctx).find(req.process);
      if (proc.pty) throw new ConnectError('a PTY has no stdin to close: send Ctrl-D (0x04) instead', Code.FailedPrecondition);
      proc.stdinOpen = false;
      proc.handle.stdin.end();
      return {};
    },

    async sendSignal(req, ctx) {
      await caller(ctx);
      const proc = tableFor(ctx).find(req.process);
      if (req.signal !== Signal.SIGKILL && req.signal !== Signal.SIGTERM) throw new ConnectError(`unsupported signal ${req.signal}`, Code.InvalidArgument);
      proc.handle.kill(req.signal);
      return {};
    },

    async update(req, ctx) {
      const c = await caller(ctx);
      const proc = tableFor(ctx).find(req.process);
      if (!proc.pty) throw new ConnectError(`process ${proc.pid} has no PTY to resize`, Code.FailedPrecondition);
      const size = req.pty?.size;
      if (!size?.cols || !size.rows) throw new ConnectError('pty.size with cols and rows is required', Code.InvalidArgument);
      // The terminal is the one `script` made for its child: resized on the child's side (the
      // kernel then sends SIGWINCH to the terminal's foreground process group).
      const r = await c.agent.execCollect({
        argv: ['/bin/sh', '-c', 'for c in $(pgrep -P "$1"); do stty -F "$(readlink /proc/$c/fd/0)" rows "$2" cols "$3" || exit 1; done', 'sh', String(proc.pid), String(size.rows), String(size.cols)],
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
        timeoutMs: 10_000,
        maxOutputBytes: 4096,
      });
      if (r.exitCode !== 0) throw new ConnectError(`resizing the PTY failed: ${r.stderr.toString().trim()}`, Code.Internal);
      return {};
    },
  } as Partial<ServiceImpl<typeof Process>>;
}

export type { ProcessEvent };

// The one place kiln starts child processes. Every tool wrapper in src/tools/ goes through
// run() so that a failing tool always surfaces its stderr tail, exit status and argv in the
// error it raises, and no wrapper re-implements that plumbing.
import { spawn, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { KilnError } from '../errors.ts';

const STDERR_TAIL = 4096;

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  signal?: AbortSignal;
  /** Kill the process (SIGKILL) after this many ms. */
  timeoutMs?: number;
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[];
  /** Keep stdout as a Buffer instead of decoding it. */
  binary?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stdoutBuffer: Buffer;
  stderr: string;
}

export class ProcessError extends KilnError {
  constructor(
    readonly tool: string,
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly exitSignal: NodeJS.Signals | null,
    readonly stderrTail: string,
    reason?: string,
  ) {
    const status = reason ?? (exitSignal ? `killed by ${exitSignal}` : `exited with code ${exitCode}`);
    const tail = stderrTail.trim();
    super('KILN_ERR_TOOL_FAILED', `${tool} ${status}${tail ? `: ${tail}` : ''}`, {
      tool,
      argv: [...argv],
      exit_code: exitCode,
      signal: exitSignal,
    });
  }
}

function tail(chunks: Buffer[], limit: number): string {
  const all = Buffer.concat(chunks);
  return all.subarray(Math.max(0, all.length - limit)).toString('utf8');
}

/** Runs a command to completion, capturing stdout and the tail of stderr. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const spawnOpts: SpawnOptions = {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      signal: opts.signal,
    };
    let child;
    try {
      child = spawn(cmd, args, spawnOpts);
    } catch (err) {
      reject(new ProcessError(cmd, args, null, null, '', (err as Error).message));
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let errBytes = 0;
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => {
      err.push(b);
      errBytes += b.length;
      // Bound memory for chatty tools: only the tail ever reaches an error message.
      while (errBytes > STDERR_TAIL * 4 && err.length > 1) errBytes -= err.shift()!.length;
    });
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    if (opts.timeoutMs) {
      timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, opts.timeoutMs);
    }
    child.on('error', (e) => {
      clearTimeout(timer);
      const reason = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not installed (not found on PATH)' : e.message;
      reject(new ProcessError(cmd, args, null, null, tail(err, STDERR_TAIL), reason));
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      const stdoutBuffer = Buffer.concat(out);
      const stderr = tail(err, STDERR_TAIL);
      const ok = opts.okCodes ?? [0];
      if (timedOut) {
        reject(new ProcessError(cmd, args, code, sig, stderr, `timed out after ${opts.timeoutMs} ms`));
      } else if (code === null || !ok.includes(code)) {
        reject(new ProcessError(cmd, args, code, sig, stderr));
      } else {
        resolve({ code, stdout: opts.binary ? '' : stdoutBuffer.toString('utf8'), stdoutBuffer, stderr });
      }
    });
    // A tool that exits before reading all its input must fail as itself, not crash kilnd with EPIPE.
    child.stdin!.on('error', () => {});
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/**
 * True when `pid` is a live process. A zombie counts as dead: a daemonized VMM is reparented
 * to whatever init the host has, which may reap it late or never.
 */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export interface LineStream {
  /** Settles when the process ends: resolves after stop(), rejects (ProcessError) on its own exit. */
  readonly done: Promise<void>;
  stop(): void;
}

/**
 * Runs a long-lived tool (a monitor) and hands each stdout line to `onLine`. Its ending on its
 * own is an error carrying the stderr tail, like run()'s.
 */
export function streamLines(cmd: string, args: readonly string[], onLine: (line: string) => void): LineStream {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const err: Buffer[] = [];
  let stopped = false;
  let partial = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (s: string) => {
    const lines = (partial + s).split('\n');
    partial = lines.pop()!;
    for (const l of lines) onLine(l);
  });
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(new ProcessError(cmd, args, null, null, tail(err, STDERR_TAIL), e.message)));
    child.on('close', (code, sig) => (stopped ? resolve() : reject(new ProcessError(cmd, args, code, sig, tail(err, STDERR_TAIL)))));
  });
  done.catch(() => {});
  return {
    done,
    stop() {
      stopped = true;
      child.kill('SIGTERM');
    },
  };
}

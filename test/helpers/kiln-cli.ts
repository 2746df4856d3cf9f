// Runs the `kiln` CLI the way a user does (a child process against a daemon's URL), for the
// tests of CLI behaviour: output, exit codes and errors.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export const KILN_BIN = new URL('../../bin/kiln.js', import.meta.url).pathname;

export interface CliResult {
  stdout: string;
  stderr: string;
  code: number;
}

/**
 * A non-zero exit is a result to assert on, not an exception. `daemon`: a URL, or a test
 * daemon, whose state dir the CLI then reads the API token from (as `--state-dir` does).
 */
export async function runKiln(daemon: string | { url: string; stateDir: string }, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const target = typeof daemon === 'string' ? ['--api', daemon] : ['--api', daemon.url, '--state-dir', daemon.stateDir];
  try {
    const r = await promisify(execFile)(process.execPath, [KILN_BIN, ...target, ...args], {
      ...(opts.timeoutMs ? { timeout: opts.timeoutMs } : {}),
      ...(opts.env ? { env: opts.env } : {}),
    });
    return { ...r, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

// zstd as a stream filter: Node 20's zlib has no zstd, and layers can be gigabytes, so they are
// piped through `zstd -dc` rather than buffered by run(). Failures surface as ProcessError with
// zstd's stderr, like every other tool wrapper.
import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import { ProcessError, run } from '../util/process.ts';

const STDERR_TAIL = 4096;

/** Decompresses a zstd stream. The returned stream errors if zstd fails or the input errors. */
export function zstdDecompressStream(input: Readable): Readable {
  const argv = ['-dc', '--no-progress'];
  const child = spawn('zstd', argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  const out = new PassThrough();
  let stderr = '';
  let failed = false;
  const fail = (e: Error) => {
    if (failed) return;
    failed = true;
    input.unpipe(child.stdin);
    child.kill('SIGKILL');
    out.destroy(e);
  };
  child.stderr.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString('utf8')).slice(-STDERR_TAIL);
  });
  child.on('error', (e) => {
    const reason = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not installed (not found on PATH)' : e.message;
    fail(new ProcessError('zstd', argv, null, null, stderr, reason));
  });
  child.stdin.on('error', () => {});
  input.on('error', (e) => fail(e));
  input.pipe(child.stdin);
  child.stdout.pipe(out, { end: false });
  // 'close' fires after stdout is drained, so every byte zstd wrote has reached `out`.
  child.on('close', (code, sig) => {
    if (failed) return;
    if (code === 0) out.end();
    else fail(new ProcessError('zstd', argv, code, sig, stderr));
  });
  // A consumer that stops reading early (destroy) must not leave zstd running.
  out.on('close', () => {
    if (child.exitCode === null && child.signalCode === null) {
      input.unpipe(child.stdin);
      input.destroy();
      child.kill('SIGKILL');
    }
  });
  return out;
}

/** Compresses a buffer (small inputs; tests use it to make zstd layers). */
export async function zstdCompress(data: Buffer, level = 3): Promise<Buffer> {
  return (await run('zstd', [`-${level}`, '-c', '-q'], { input: data, binary: true })).stdoutBuffer;
}

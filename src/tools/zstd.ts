// zstd: Node 20's zlib has no zstd, so zstd-compressed layers stream through the zstd CLI.
// A streaming sibling of run(): stdout is the decompressed stream; a failure (corrupt input,
// or the tool missing) surfaces as a ProcessError with zstd's stderr on that stream.
import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import { ProcessError } from '../util/process.ts';

export function zstdDecompressFile(file: string): Readable {
  const args = ['-dc', '-q', '--', file];
  const child = spawn('zstd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = new PassThrough();
  const err: Buffer[] = [];
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.stdout.pipe(out, { end: false });
  let stdoutDone = false;
  let exit: [number | null, NodeJS.Signals | null] | null = null;
  const finish = () => {
    if (!stdoutDone || !exit) return;
    const [code, sig] = exit;
    if (code === 0) out.end();
    else out.destroy(new ProcessError('zstd', args, code, sig, Buffer.concat(err).toString('utf8').slice(-4096)));
  };
  child.stdout.on('end', () => {
    stdoutDone = true;
    finish();
  });
  child.on('error', (e) => out.destroy(new ProcessError('zstd', args, null, null, '', (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not installed (not found on PATH)' : e.message)));
  child.on('close', (code, sig) => {
    exit = [code, sig];
    stdoutDone = true;
    finish();
  });
  // The consumer giving up (an error further down) must not leave zstd running.
  out.on('close', () => {
    if (!exit) child.kill('SIGKILL');
  });
  return out;
}

// The C compiler, for kiln-init (a static binary: it runs before any root is mounted).
import { run } from '../util/process.ts';

export async function compileStatic(source: string, out: string): Promise<void> {
  await run('cc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', out, source]);
}

export async function ccVersion(): Promise<string> {
  return (await run('cc', ['--version'])).stdout.split('\n')[0] ?? '';
}

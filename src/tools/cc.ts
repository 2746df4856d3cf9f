// The C compiler, for kiln-init (a static binary: it runs before any root is mounted).
import { run } from '../util/process.ts';

export async function compileStatic(sources: string[], out: string): Promise<void> {
  await run('cc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', out, ...sources]);
}

export async function ccVersion(): Promise<string> {
  return (await run('cc', ['--version'])).stdout.split('\n')[0] ?? '';
}

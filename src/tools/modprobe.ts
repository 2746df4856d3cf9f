// depmod / modprobe against an extracted (not installed) kernel tree, to find which module
// files the initramfs needs and in which order to load them.
import { run } from '../util/process.ts';

export async function depmod(baseDir: string, kver: string): Promise<void> {
  await run('depmod', ['-b', baseDir, kver]);
}

/** Module files `module` needs, dependencies first, itself last ([] when built in). */
export async function moduleDependencies(baseDir: string, kver: string, module: string): Promise<string[]> {
  const { stdout } = await run('modprobe', ['-d', baseDir, '-S', kver, '--show-depends', module]);
  const files: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^insmod\s+(\S+)/.exec(line.trim());
    if (m) files.push(m[1]!);
  }
  return files;
}

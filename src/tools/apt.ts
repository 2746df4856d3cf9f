// apt-get / apt-cache / dpkg-deb: kiln downloads Debian packages (the guest kernel) and
// extracts them into its own dirs; it never installs them on the host.
import fs from 'node:fs/promises';
import path from 'node:path';
import { run } from '../util/process.ts';

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

export async function aptUpdate(): Promise<void> {
  await run('apt-get', ['update', '-q'], { env: APT_ENV, timeoutMs: 600_000 });
}

/** The first `Depends:` of `pkg` that matches `pattern` (how a metapackage names its target). */
export async function aptDependsMatching(pkg: string, pattern: RegExp): Promise<string | null> {
  const { stdout } = await run('apt-cache', ['depends', pkg], { env: APT_ENV });
  for (const line of stdout.split('\n')) {
    const m = /^\s*Depends:\s*(\S+)/.exec(line);
    if (m && pattern.test(m[1]!)) return m[1]!;
  }
  return null;
}

/** Downloads `pkg`'s .deb into `dir` and returns its path. */
export async function aptDownload(pkg: string, dir: string): Promise<string> {
  await run('apt-get', ['download', '-q', pkg], { cwd: dir, env: APT_ENV, timeoutMs: 600_000 });
  const deb = (await fs.readdir(dir)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb in ${dir}`);
  return path.join(dir, deb);
}

export async function dpkgExtract(deb: string, dest: string): Promise<void> {
  await run('dpkg-deb', ['-x', deb, dest]);
}

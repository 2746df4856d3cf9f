// Function runtimes: a Debian recipe per language (the runtime from Debian's packages plus
// kiln's shim in that language) and how that runtime names its code. The shim's source is a
// recipe input, so editing a shim rebuilds the image.
import fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { DebianRecipe } from '../image/recipes/debian-recipe.ts';

export const RUNTIMES = ['node', 'python'] as const;
export type RuntimeName = (typeof RUNTIMES)[number];

/** The port the shim listens on inside the guest (reached over the VM's bridge address). */
export const SHIM_PORT = 7070;

export interface RuntimeSpec {
  name: RuntimeName;
  /** Where inline code is written: a bare handler name is a function of this file. */
  inlineFile: string;
  /** Debian packages on top of minbase. */
  packages: string[];
  shimSource: URL;
  /** Path of the shim inside the image. */
  shimPath: string;
  command: string[];
}

const SPECS: Record<RuntimeName, RuntimeSpec> = {
  node: {
    name: 'node',
    inlineFile: 'index.js',
    packages: ['nodejs'],
    shimSource: new URL('./shims/node-shim.cjs', import.meta.url),
    shimPath: '/opt/kiln/shim.cjs',
    command: ['/usr/bin/node', '/opt/kiln/shim.cjs'],
  },
  python: {
    name: 'python',
    inlineFile: 'main.py',
    // python3 (not python3-minimal): the shim needs http.server, json, asyncio.
    packages: ['python3'],
    shimSource: new URL('./shims/python-shim.py', import.meta.url),
    shimPath: '/opt/kiln/shim.py',
    command: ['/usr/bin/python3', '-u', '/opt/kiln/shim.py'],
  },
};

export function isRuntime(name: string): name is RuntimeName {
  return (RUNTIMES as readonly string[]).includes(name);
}

export function runtimeSpec(name: RuntimeName): RuntimeSpec {
  return SPECS[name];
}

/** The Debian recipe of a runtime's image (its cache key covers the shim's source). */
export async function runtimeRecipe(name: RuntimeName): Promise<DebianRecipe> {
  const spec = SPECS[name];
  const shim = await fs.readFile(fileURLToPath(spec.shimSource), 'utf8');
  return {
    name: `kiln-runtime-${name}`,
    packages: spec.packages,
    inputs: [shim],
    config: {
      cmd: spec.command,
      env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', KILN_SHIM_PORT: String(SHIM_PORT) },
      workdir: '/tmp',
      user: '0',
    },
    async customize(root) {
      await fs.mkdir(`${root}/opt/kiln`, { recursive: true });
      await fs.writeFile(`${root}${spec.shimPath}`, shim, { mode: 0o644 });
    },
  };
}

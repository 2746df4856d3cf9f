// Where an executable is: a path as given, or the first match on PATH. Null when absent,
// for callers that decide what to do without one (backend selection, `kiln doctor`).
import { constants as FS } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export async function findBinary(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  const candidates = name.includes('/')
    ? [path.resolve(name)]
    : (env.PATH || DEFAULT_PATH)
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      await fs.access(c, FS.X_OK);
      if ((await fs.stat(c)).isFile()) return c;
    } catch {
      // keep looking
    }
  }
  return null;
}

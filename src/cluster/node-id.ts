// A node's identity: generated at its first start and kept in its state dir, so a node that
// restarts (or comes back after being lost) rejoins as itself rather than as a new node.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

export async function loadNodeId(stateDir: string): Promise<string> {
  const file = path.join(stateDir, 'node-id');
  const have = (await fs.readFile(file, 'utf8').catch(() => '')).trim();
  if (/^node-[0-9a-f]{12}$/.test(have)) return have;
  const id = `node-${randomBytes(6).toString('hex')}`;
  await fs.writeFile(`${file}.tmp`, `${id}\n`, { mode: 0o600 });
  await fs.rename(`${file}.tmp`, file);
  return id;
}

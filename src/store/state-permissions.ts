// The state dir holds the database (every VM's env, keys, function code) and the API token:
// 0700 for the dir, 0600 for those files, enforced on every start (a restore from backup or a
// hand-made dir may have left them open). VM runtime dirs below keep their own modes.
import fs from 'node:fs/promises';
import path from 'node:path';

/** SQLite's own files: the database and, in WAL mode, its log and shared-memory index. */
export function databaseFiles(dbFile: string): string[] {
  return [dbFile, `${dbFile}-wal`, `${dbFile}-shm`, `${dbFile}-journal`];
}

export async function secureStateDir(stateDir: string): Promise<void> {
  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
  await fs.chmod(stateDir, 0o700);
}

/**
 * Creates the database file 0600 before SQLite opens it (SQLite gives its -wal and -shm the
 * database file's mode) and tightens files a previous run left wider.
 */
export async function secureDatabaseFiles(dbFile: string): Promise<void> {
  await fs.mkdir(path.dirname(dbFile), { recursive: true, mode: 0o700 });
  const fh = await fs.open(dbFile, 'a', 0o600);
  await fh.close();
  for (const f of databaseFiles(dbFile)) {
    await fs.chmod(f, 0o600).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }
}

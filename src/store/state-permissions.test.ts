import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { SqliteStore } from './sqlite-store.ts';
import { secureDatabaseFiles, secureStateDir } from './state-permissions.ts';

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-perms-'));
after(() => fs.rm(dir, { recursive: true, force: true }));
const mode = async (p: string) => (await fs.stat(p)).mode & 0o777;

test('state dir 0700 and database files 0600, from creation and again on a later start', async () => {
  const sd = path.join(dir, 'state');
  await secureStateDir(sd);
  assert.equal(await mode(sd), 0o700);
  const db = path.join(sd, 'kiln.db');
  await secureDatabaseFiles(db);
  const store = new SqliteStore(db);
  try {
    assert.equal(await mode(db), 0o600);
    for (const f of [`${db}-wal`, `${db}-shm`]) if (await fs.stat(f).catch(() => null)) assert.equal(await mode(f), 0o600, f);
  } finally {
    await store.close();
  }
  await fs.chmod(sd, 0o755);
  await fs.chmod(db, 0o644);
  await secureStateDir(sd);
  await secureDatabaseFiles(db);
  assert.equal(await mode(sd), 0o700);
  assert.equal(await mode(db), 0o600);
});

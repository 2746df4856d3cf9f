// The store conformance suite (conformance.ts) on SQLite: a fresh database file per case.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { storeConformance } from './conformance.ts';
import { SqliteStore } from './sqlite-store.ts';

storeConformance('sqlite', {
  async open() {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-store-'));
    const store = new SqliteStore(path.join(dir, 'kiln.db'));
    return {
      store,
      async dispose() {
        await store.close();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  },
});

// Which store kilnd runs on: SQLite in the state dir (the default, the single-host install),
// or PostgreSQL when `--store` / KILN_STORE is a postgres:// URL (a cluster's shared state).
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { PgStore } from './pg/pg-store.ts';
import { SqliteStore } from './sqlite-store.ts';
import { secureDatabaseFiles } from './state-permissions.ts';
import type { Store } from './store.ts';

const PG_URL = /^postgres(ql)?:\/\//;

/** Checks a --store value without connecting: empty, 'sqlite', or a postgres:// URL. */
export function parseStoreSpec(spec: string | null | undefined): { kind: 'sqlite' } | { kind: 'postgres'; url: string } {
  if (!spec || spec === 'sqlite') return { kind: 'sqlite' };
  if (PG_URL.test(spec)) {
    try {
      new URL(spec);
    } catch {
      throw new KilnError('KILN_ERR_VALIDATION', `--store is not a valid URL: ${redactStoreUrl(spec)}`);
    }
    return { kind: 'postgres', url: spec };
  }
  throw new KilnError('KILN_ERR_VALIDATION', `--store must be 'sqlite' or a postgres:// URL, got ${JSON.stringify(redactStoreUrl(spec))}`);
}

/** The URL without its password, for logs and errors. */
export function redactStoreUrl(spec: string): string {
  return spec.replace(/^([a-z]+:\/\/[^:/@]*):[^@/]*@/i, '$1:***@');
}

export async function openStore(spec: string | null | undefined, stateDir: string): Promise<Store> {
  const s = parseStoreSpec(spec);
  if (s.kind === 'postgres') return PgStore.open(s.url);
  const dbFile = path.join(stateDir, 'kiln.db');
  await secureDatabaseFiles(dbFile);
  return new SqliteStore(dbFile);
}

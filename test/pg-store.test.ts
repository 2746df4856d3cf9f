// The store conformance suite (src/store/conformance.ts) on a real PostgreSQL 15 (Debian's),
// started by this test in a temp dir as an unprivileged user and removed afterwards; plus
// what only a shared server has: several kilnds migrating at once, and two connections
// (two hosts) racing on one row.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { storeConformance, image, vm } from '../src/store/conformance.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { PG_MIGRATIONS } from '../src/store/pg/migrations.ts';
import { startKilnd } from './helpers/kilnd.ts';
import { startPostgres, type TestPostgres } from './helpers/postgres.ts';

let server: TestPostgres;

before(async () => {
  server = await startPostgres();
});

after(async () => {
  await server?.dispose();
});

storeConformance('postgres', {
  async open() {
    const store = await PgStore.open(await server.createDatabase());
    return { store, dispose: () => store.close() };
  },
});

test('[postgres] kilnds starting together migrate once; a newer schema is refused', async () => {
  const url = await server.createDatabase();
  const stores = await Promise.all(Array.from({ length: 4 }, () => PgStore.open(url)));
  try {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query('SELECT version FROM kiln_schema');
      assert.deepEqual(rows, [{ version: PG_MIGRATIONS.length }]);
      await c.query('UPDATE kiln_schema SET version = $1', [PG_MIGRATIONS.length + 1]);
    } finally {
      await c.end();
    }
    await assert.rejects(PgStore.open(url), (e: { code?: string; message: string }) => e.code === 'KILN_ERR_HOST_SETUP' && /newer than this kiln/.test(e.message));
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
});

test('[postgres] two hosts on one database: each sees the other, compare-and-set decides races', async () => {
  const url = await server.createDatabase();
  const [a, b] = [await PgStore.open(url), await PgStore.open(url)];
  try {
    await a.insertImage(image);
    await a.insertVm(vm('vm-1', 'shared'));
    assert.equal((await b.getVm('shared'))?.id, 'vm-1', "a's insert is b's read");
    await assert.rejects(b.insertVm(vm('vm-2', 'shared')), { code: 'KILN_ERR_NAME_CONFLICT' });
    await a.updateVm('vm-1', { state: 'ready' });
    const [ra, rb] = await Promise.all([
      a.transitionVm('vm-1', ['ready'], { state: 'stopping', stateReason: 'a' }),
      b.transitionVm('vm-1', ['ready'], { state: 'stopping', stateReason: 'b' }),
    ]);
    assert.equal([ra, rb].filter(Boolean).length, 1, 'one host moved it');
    await Promise.all([a.updateVm('vm-1', { pid: 11 }), b.updateVm('vm-1', { exitCode: 0 })]);
    const got = (await a.getVm('vm-1'))!;
    assert.equal(got.pid, 11);
    assert.equal(got.exitCode, 0);
    assert.equal(got.stateReason, (ra ?? rb)!.stateReason, "neither host's column update reverted the other's");
    for (let i = 0; i < 6; i++) await (i % 2 ? a : b).insertVm(vm(`vm-l${i}`));
    const pick = (taken: ReadonlySet<string>) => Array.from({ length: 10 }, (_, i) => `10.0.2.${i + 2}`).find((x) => !taken.has(x)) ?? null;
    const leased = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).assignIp(`vm-l${i}`, pick)));
    assert.equal(new Set(leased).size, 6, `no address leased twice across hosts: ${leased.join(' ')}`);
  } finally {
    await a.close();
    await b.close();
  }
});

test('[postgres] kilnd --store postgres://…: its state lives in PostgreSQL, not in the state dir, across restarts', async () => {
  const url = await server.createDatabase();
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-test-'));
  const serveArgs = ['--store', url, '--accel', process.env.KILN_ACCEL ?? 'tcg'];
  let d = await startKilnd({ stateDir, serveArgs });
  try {
    const vol = await d.client.createVolume('pgvol', 16);
    const images = await d.client.listImages();
    assert.ok(images.length >= 1, 'the default image was recorded at start');
    await d.stop();
    await assert.rejects(fs.stat(path.join(stateDir, 'kiln.db')), { code: 'ENOENT' }, 'no SQLite file beside a PostgreSQL store');
    const direct = await PgStore.open(url);
    try {
      assert.equal((await direct.getVolume('pgvol'))?.id, vol.id, 'the row is in PostgreSQL');
      assert.deepEqual((await direct.listImages()).map((i) => i.id).sort(), images.map((i) => i.id).sort());
    } finally {
      await direct.close();
    }
    d = await startKilnd({ stateDir, serveArgs, network: d.network });
    assert.equal((await d.client.getVolume('pgvol')).id, vol.id, 'a restarted kilnd finds it');
    await d.client.deleteVolume(vol.id);
  } finally {
    await d.dispose();
  }
});

test('kiln serve --store refuses what is neither sqlite nor a postgres:// URL, before starting', async () => {
  const r = spawnSync(process.execPath, [path.join(process.cwd(), 'bin/kiln.js'), 'serve', '--store', 'mysql://x@y/z', '--state-dir', os.tmpdir()], { encoding: 'utf8', timeout: 60_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--store must be 'sqlite' or a postgres:\/\/ URL/);
});

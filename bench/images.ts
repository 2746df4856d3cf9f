// bench/images: synthetic OCI images (many small files plus some large, half incompressible)
// pushed to a loopback docker-registry. Per size, in one run:
//   - kiln's first pull + convert (POST /v1/images?wait=1 on a real kilnd),
//   - the Beta9 per-VM cost: plain `mksquashfs -comp zstd` of the same (flattened) tree,
//   - the NQRust per-VM cost: `cp` of an ext4 image of the same tree,
//   - kiln's per-VM root preparation for the converted image: the exact `rootfs.prepare`
//     step body (drivesFor + prepareVmRoot + buildDrives), median over N VMs.
//   npm run bench -- images [--sizes 100,500,2048] [--vms 100]
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { EventBus } from '../src/events/event-bus.ts';
import { prepareVmRoot } from '../src/image/rootfs-prepare.ts';
import { VolumeService } from '../src/image/volume-service.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { VmRecord } from '../src/store/store.ts';
import { mkfsExt4 } from '../src/tools/mkfs-ext4.ts';
import { run } from '../src/util/process.ts';
import { prepareGuestAssets } from '../src/vm/guest-assets.ts';
import { guestConfig, runtimeFiles } from '../src/vm/vm-spec.ts';
import { TEST_ASSETS_DIR, startKilnd } from '../test/helpers/kilnd.ts';
import { startRegistry, type TestRegistry } from '../test/helpers/registry.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({
  options: { sizes: { type: 'string', default: '100,500' }, vms: { type: 'string', default: '100' } },
  allowPositionals: true,
});
const SIZES_MB = values.sizes.split(',').map(Number);
const VMS = Number(values.vms);
const MiB = 1024 * 1024;

/** Half the bytes in small files (2–62 KiB, text: compressible), half in 16 MiB random files. */
async function makeTree(dir: string, sizeMb: number): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  const small = (sizeMb * MiB) / 2;
  for (let d = 0; bytes < small; d++) {
    const sub = path.join(dir, 'usr/share/data', `d${d}`);
    await fs.mkdir(sub, { recursive: true });
    for (let i = 0; i < 200 && bytes < small; i++) {
      const n = 2048 + Math.floor(Math.random() * 60 * 1024);
      await fs.writeFile(path.join(sub, `f${i}.txt`), randomBytes(Math.ceil((n * 3) / 4)).toString('base64').slice(0, n));
      files++;
      bytes += n;
    }
  }
  await fs.mkdir(path.join(dir, 'opt/blobs'), { recursive: true });
  for (let i = 0; bytes < sizeMb * MiB; i++) {
    const fh = await fs.open(path.join(dir, 'opt/blobs', `blob${i}.bin`), 'w');
    for (let k = 0; k < 16; k++) await fh.write(randomBytes(MiB));
    await fh.close();
    files++;
    bytes += 16 * MiB;
  }
  return { files, bytes };
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Pushes a blob with the registry's monolithic upload (POST, then PUT ?digest=). */
async function pushBlob(reg: TestRegistry, repo: string, file: string): Promise<{ digest: string; size: number }> {
  const digest = await sha256File(file);
  const size = (await fs.stat(file)).size;
  const start = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (start.status !== 202) throw new Error(`upload start: ${start.status}`);
  const loc = new URL(start.headers.get('location')!, reg.url);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, {
    method: 'PUT',
    body: createReadStream(file) as unknown as BodyInit,
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    duplex: 'half',
  } as RequestInit);
  if (put.status !== 201) throw new Error(`upload ${digest}: ${put.status} ${await put.text()}`);
  return { digest, size };
}

/** An OCI image of `tree` in two zstd layers (small files, large files), pushed as repo:v1. */
async function pushImage(reg: TestRegistry, repo: string, tree: string, work: string): Promise<void> {
  const layers = [];
  const diffIds = [];
  for (const [i, part] of ['usr', 'opt'].entries()) {
    const tarFile = path.join(work, `layer${i}.tar`);
    const blob = `${tarFile}.zst`;
    await run('tar', ['--numeric-owner', '-C', tree, '-cf', tarFile, part], { timeoutMs: 3_600_000 });
    diffIds.push(await sha256File(tarFile));
    await run('zstd', ['-q', '-3', '-T0', '--rm', '-o', blob, tarFile], { timeoutMs: 3_600_000 });
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', ...(await pushBlob(reg, repo, blob)) });
    await fs.rm(blob);
  }
  const configFile = path.join(work, 'config.json');
  await fs.writeFile(configFile, JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  }));
  const config = { mediaType: 'application/vnd.oci.image.config.v1+json', ...(await pushBlob(reg, repo, configFile)) };
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers };
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/v1`, {
    method: 'PUT', body: JSON.stringify(manifest), headers: { 'content-type': manifest.mediaType },
  });
  if (res.status !== 201) throw new Error(`manifest: ${res.status} ${await res.text()}`);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

interface Row {
  size: number;
  files: number;
  pullConvert: number;
  convert: number;
  imageMb: number;
  beta9: number;
  nqrust: number;
  prepMedian: number;
  prepP99: number;
  strategy: string;
}

async function main(): Promise<void> {
  const reg = await startRegistry();
  const d = await startKilnd();
  const work = await fs.mkdtemp(path.join(d.stateDir, 'bench-work-'));
  const rows: Row[] = [];
  try {
    const assets = await prepareGuestAssets(TEST_ASSETS_DIR, () => {});
    for (const size of SIZES_MB) {
      const tree = path.join(work, `tree-${size}`);
      process.stderr.write(`${size} MB: generating tree… `);
      const { files } = await makeTree(tree, size);
      process.stderr.write(`${files} files; pushing… `);
      const repo = `bench/img${size}`;
      await pushImage(reg, repo, tree, work);
      await run('sync', []);

      process.stderr.write('kiln pull+convert… ');
      const ref = `${reg.host}/${repo}:v1`;
      let convertMs = NaN;
      const abort = new AbortController();
      const events = await d.client.subscribe({ signal: abort.signal });
      const created = (async () => {
        for await (const e of events) {
          if (e.type === 'image.created' && e.name === ref) return Number(e.convert_ms);
          if (e.type === 'image.failed' && e.ref === ref) return NaN;
        }
        return NaN;
      })();
      const pullConvert = await timed(() => d.client.pullImage({ ref }, { wait: true }));
      convertMs = await created;
      abort.abort();
      const img = await d.client.getImage(ref);

      process.stderr.write('mksquashfs (Beta9)… ');
      const sq = path.join(work, 'beta9.squashfs');
      const beta9 = await timed(() => run('mksquashfs', [tree, sq, '-noappend', '-quiet', '-no-progress', '-comp', 'zstd'], { timeoutMs: 3_600_000 }));
      await fs.rm(sq);

      process.stderr.write('cp ext4 (NQRust)… ');
      const ext4 = path.join(work, 'nqrust.ext4');
      await mkfsExt4(ext4, { sizeMib: Math.ceil(size * 1.3) + 64, label: 'nq', fromDir: tree });
      const copy = path.join(work, 'nqrust-copy.ext4');
      const nqrust = await timed(() => run('cp', ['--reflink=never', ext4, copy], { timeoutMs: 3_600_000 }));
      await fs.rm(copy);
      await fs.rm(ext4);

      process.stderr.write(`per-VM prepare ×${VMS}… `);
      // Let the gigabytes the baselines just wrote reach the disk first: the per-VM step is
      // a few small metadata writes, and measuring them behind a writeback burst measures the burst.
      await run('sync', []);
      const store = new SqliteStore(path.join(d.stateDir, 'kiln.db'));
      const bus = new EventBus(store, pino({ level: 'silent' }));
      const volumes = new VolumeService(store, bus, d.stateDir, []);
      const image = (await store.getImage(img.id))!;
      const vmsDir = path.join(work, 'vms');
      const prep: number[] = [];
      let strategy = '';
      // Five warm-up VMs (template extents loaded, JIT, dentry cache), not counted.
      for (let i = -5; i < VMS; i++) {
        const vm: VmRecord = {
          id: `vm-bench${i}`, name: `bench-${i}`, state: 'creating', stateReason: null, imageId: image.id, vcpus: 1, memoryMib: 256,
          kernelArgs: [], cmd: null, env: {}, network: 'none', ip: null, ports: [], readiness: 'auto', agentToken: null, agent: null, health: 'unknown', healthReason: null, backend: 'qemu', accelerator: 'tcg', pid: null,
          bootCount: 1, consoleOffset: 0, exitCode: null, volumes: [], createdAt: Date.now(), updatedAt: Date.now(),
        };
        const dir = path.join(vmsDir, vm.id);
        const files = runtimeFiles(dir);
        // Exactly the body of VmManager.boot's `rootfs.prepare` step.
        const t0 = performance.now();
        const drives = await volumes.drivesFor(vm, dir);
        const s = await prepareVmRoot({
          runtimeDir: dir, scratch: files.scratch, config: files.config, scratchTemplate: assets.scratchTemplate,
          guest: guestConfig(vm, image, 5000, drives),
        });
        await volumes.buildDrives(vm, drives);
        if (i >= 0) prep.push(performance.now() - t0);
        strategy = s ?? strategy;
      }
      await bus.flush();
      await store.close();
      await fs.rm(vmsDir, { recursive: true, force: true });
      await fs.rm(tree, { recursive: true, force: true });
      await d.client.deleteImage(img.id);
      await d.client.gcImages();
      rows.push({
        size, files, pullConvert, convert: convertMs, imageMb: img.size_bytes / MiB, beta9, nqrust,
        prepMedian: median(prep), prepP99: quantile(prep, 0.99), strategy,
      });
      process.stderr.write('done\n');
    }
  } finally {
    await d.dispose();
    await reg.stop();
  }
  const fsType = (await run('stat', ['-f', '-c', '%T', os.tmpdir()])).stdout.trim();
  console.log(`\nbench/images: synthetic images (half small text files, half 16 MiB random files), ${os.cpus().length} CPUs, state dir on ${fsType}\n`);
  console.log(table(
    ['image', 'files', 'kiln first pull+convert s', '(convert s)', 'rootfs MiB', 'Beta9 per VM: mksquashfs zstd s', 'NQRust per VM: cp ext4 s', `kiln per VM: rootfs.prepare median ms (×${VMS})`, 'p99 ms'],
    rows.map((r) => [`${r.size} MB`, String(r.files), r.pullConvert / 1000, r.convert / 1000, r.imageMb, r.beta9 / 1000, r.nqrust / 1000, r.prepMedian.toFixed(2), r.prepP99.toFixed(2)]),
  ));
  console.log(`\nwritable layer strategy: ${rows[0]?.strategy}; per-VM target ≤ 2 ms at every size`);
  for (const r of rows) console.log(`${r.size} MB: mksquashfs per VM ÷ kiln per VM = ${(r.beta9 / r.prepMedian).toFixed(0)}×`);
}

await main();

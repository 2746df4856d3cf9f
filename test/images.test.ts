// OCI images end to end: real images (umoci-built, with whiteouts, an opaque dir, links,
// owners, setuid, xattrs) pushed to Debian's docker-registry on loopback, pulled and
// converted by a real kilnd, booted in real microVMs whose workload inspects the tree and
// prints what it finds on the console.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { KilnClient, KilnEvent } from '../src/sdk/client.ts';
import { getXattrs } from '../src/tools/setfattr.ts';
import { run } from '../src/util/process.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { startRegistry, type TestRegistry } from './helpers/registry.ts';
import { FEATURES_EXPECTED, OciLayoutBuilder, buildTestImages, pushTestImages, type PushedTestImages } from './helpers/test-images.ts';
import { expectApiError } from './helpers/api-errors.ts';

let registry: TestRegistry;
let images: PushedTestImages;
let d: TestDaemon;

before(async () => {
  registry = await startRegistry();
  const builder = await OciLayoutBuilder.create();
  await buildTestImages(builder);
  images = await pushTestImages(builder, registry.url, registry.host);
  d = await startKilnd();
});

after(async () => {
  await d?.dispose();
  await images?.builder.remove();
  await registry?.stop();
});

/** Stored events (replayed from seq 0) until `stop` says enough. */
async function eventsUntil(client: KilnClient, stop: (e: KilnEvent) => boolean): Promise<KilnEvent[]> {
  const abort = new AbortController();
  const out: KilnEvent[] = [];
  const timer = setTimeout(() => abort.abort(), 60_000);
  try {
    for await (const e of client.events({ since: 0, signal: abort.signal })) {
      out.push(e);
      if (stop(e)) break;
    }
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
  return out;
}

/** A shell script (run by the image's `/bin/sh -c` entrypoint) printing what the guest sees. */
function inspectScript(): string {
  const e = FEATURES_EXPECTED;
  const statPaths = [...Object.keys(e.files), ...Object.keys(e.dirs), ...e.hardLinks.flat()];
  return [
    `for p in ${statPaths.join(' ')}; do echo "STAT|$(stat -c '%n|%f|%u|%g|%i' "$p")"; done`,
    // Contents on one line: newlines as '~' (none of the test files contains one).
    `for p in ${Object.keys(e.files).join(' ')}; do echo "CAT|$p|$(tr '\\n' '~' < "$p")"; done`,
    `for p in ${e.absent.join(' ')}; do if [ -e "$p" ] || [ -L "$p" ]; then echo "PRESENT|$p"; else echo "ABSENT|$p"; fi; done`,
    `for p in ${Object.keys(e.symlinks).join(' ')}; do echo "LINK|$p|$(readlink "$p")"; done`,
    `echo "LS|$(ls -A ${e.opaqueDir.path} | tr '\\n' ' ')"`,
    'echo "PWD|$(pwd)"; echo "ENV|$KILN_TEST"; echo "ID|$(id -u):$(id -g)"',
    'echo "INSPECT-DONE"',
  ].join('\n');
}

function parseInspect(log: string) {
  const lines = log.split(/\r?\n/).map((l) => l.trim());
  const stat = new Map<string, { mode: number; uid: number; gid: number; ino: number }>();
  const cat = new Map<string, string>();
  const exist = new Map<string, boolean>();
  const link = new Map<string, string>();
  const one = (k: string) => lines.find((l) => l.startsWith(`${k}|`))?.slice(k.length + 1);
  for (const l of lines) {
    const f = l.split('|');
    if (f[0] === 'STAT' && f.length === 6) stat.set(f[1]!, { mode: Number.parseInt(f[2]!, 16), uid: Number(f[3]), gid: Number(f[4]), ino: Number(f[5]) });
    if (f[0] === 'CAT') cat.set(f[1]!, f.slice(2).join('|'));
    if (f[0] === 'ABSENT' || f[0] === 'PRESENT') exist.set(f[1]!, f[0] === 'PRESENT');
    if (f[0] === 'LINK') link.set(f[1]!, f[2]!);
  }
  return { stat, cat, exist, link, ls: one('LS'), pwd: one('PWD'), env: one('ENV'), id: one('ID'), done: lines.includes('INSPECT-DONE') };
}

/** Boots `image` with the inspection script and checks the tree against FEATURES_EXPECTED. */
async function bootAndInspect(image: string): Promise<void> {
  const vm = await d.client.createVm({ image, cmd: [inspectScript()], memory_mib: 256 });
  try {
    await checkInspection(vm.id);
  } finally {
    await d.client.deleteVm(vm.id);
  }
}

async function checkInspection(id: string): Promise<void> {
  const done = await waitForState(d.client, id, ['stopped', 'failed']);
  const log = await d.client.logs(id);
  assert.equal(done.state, 'stopped', `VM ${id} ${done.state}: ${done.state_reason}\n${log}`);
  assert.equal(done.exit_code, 0, log);
  const r = parseInspect(log);
  assert.ok(r.done, `inspection ran to the end:\n${log}`);
  const e = FEATURES_EXPECTED;
  for (const [p, want] of Object.entries(e.files)) {
    const st = r.stat.get(p);
    assert.ok(st, `stat ${p}\n${log}`);
    assert.equal((st.mode & 0o7777).toString(8), want.mode.toString(8), `mode of ${p}`);
    assert.equal(st.mode & 0o170000, 0o100000, `${p} is a regular file`);
    assert.deepEqual([st.uid, st.gid], [want.uid, want.gid], `owner of ${p}`);
    assert.equal(r.cat.get(p), want.content.replaceAll('\n', '~'), `content of ${p}`);
  }
  for (const [p, want] of Object.entries(e.dirs)) {
    const st = r.stat.get(p)!;
    assert.equal(st.mode & 0o170000, 0o040000, `${p} is a directory`);
    assert.equal((st.mode & 0o7777).toString(8), want.mode.toString(8), `mode of ${p}`);
  }
  for (const [a, b] of e.hardLinks) assert.equal(r.stat.get(a)!.ino, r.stat.get(b)!.ino, `${a} and ${b} are one inode`);
  for (const p of e.absent) assert.equal(r.exist.get(p), false, `${p} was whited out`);
  for (const [p, target] of Object.entries(e.symlinks)) assert.equal(r.link.get(p), target, `symlink ${p}`);
  assert.deepEqual(r.ls?.trim().split(/\s+/), e.opaqueDir.entries, 'the opaque dir holds only its own layer’s entries');
  assert.equal(r.pwd, e.config.workdir, 'workdir from the image config');
  assert.equal(r.env, '1', 'env from the image config');
  assert.equal(r.id, '0:0');
}

/** xattrs cannot be read with busybox in the guest: check the image file itself on the host. */
async function assertImageXattrs(file: string, format: string): Promise<void> {
  const mnt = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-img-mnt-'));
  await run('mount', ['-o', 'loop,ro', '-t', format, file, mnt]);
  try {
    for (const [p, attrs] of Object.entries(FEATURES_EXPECTED.xattrs)) {
      const got = await getXattrs(path.join(mnt, p));
      for (const [k, v] of Object.entries(attrs)) assert.equal(got.get(k)?.toString(), v, `xattr ${k} on ${p}`);
    }
  } finally {
    await run('umount', [mnt]);
    await fs.rmdir(mnt);
  }
}

describe('OCI images', () => {
  test('pull + convert (wait=1): config, layers and builder recorded; idempotent', async () => {
    const img = await d.client.pullImage({ ref: images.features }, { wait: true });
    assert.equal(img.state, 'ready');
    assert.equal(img.format, 'squashfs');
    assert.match(img.builder ?? '', /mksquashfs .*zstd/);
    assert.equal(img.manifest_digest, images.featuresDigest);
    assert.equal(img.source, images.features);
    assert.equal(img.layers.length, 1 + 4, 'config + base + 3 layers');
    assert.deepEqual(img.config.entrypoint, FEATURES_EXPECTED.config.entrypoint);
    assert.deepEqual(img.config.cmd, FEATURES_EXPECTED.config.cmd);
    assert.equal(img.config.env.KILN_TEST, '1');
    assert.equal(img.config.workdir, '/data');
    assert.equal(img.config.user, '0:0');
    const again = await d.client.pullImage({ ref: images.features });
    assert.equal(again.id, img.id);
    assert.equal(again.state, 'ready');
    assert.ok((await d.client.listImages()).some((i) => i.id === img.id));
    await assertImageXattrs(path.join(d.stateDir, 'images', `${img.manifest_digest!.replace(':', '-')}-squashfs`, 'rootfs.squashfs'), 'squashfs');
  });

  test('the squashfs image boots and the guest sees exactly the flattened tree', async () => {
    await bootAndInspect(images.features);
  });

  test('concurrent pulls of one ref coalesce (zstd layers, erofs)', async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => d.client.pullImage({ ref: images.featuresZstd, format: 'erofs' })));
    assert.equal(a!.id, b!.id);
    assert.equal(a!.id, c!.id);
    const ready = await d.client.pullImage({ ref: images.featuresZstd, format: 'erofs' }, { wait: true });
    assert.equal(ready.state, 'ready');
    assert.equal(ready.format, 'erofs');
    const events = await eventsUntil(d.client, (e) => e.type === 'image.created' && e.id === ready.id);
    assert.equal(events.filter((e) => e.type === 'image.pulling' && e.id === ready.id).length, 1, 'one pull');
    assert.ok(events.some((e) => e.type === 'image.progress' && e.id === ready.id && e.phase === 'download'), 'download progress events');
    assert.ok(events.some((e) => e.type === 'image.progress' && e.id === ready.id && e.phase === 'build'), 'build progress event');
    await assertImageXattrs(path.join(d.stateDir, 'images', `${ready.manifest_digest!.replace(':', '-')}-erofs`, 'rootfs.erofs'), 'erofs');
    await bootAndInspect(ready.id);
  });

  test('a VM created from an unpulled ref pulls it on demand; request cmd replaces image cmd', async () => {
    const vm = await d.client.createVm({ image: images.second, name: 'on-demand' });
    const done = await waitForState(d.client, vm.id, ['stopped', 'failed']);
    const log = await d.client.logs(vm.id);
    assert.equal(done.state, 'stopped', log);
    assert.match(log, /second image/, 'the image cmd ran');
    const img = await d.client.getImage(vm.image.id);
    assert.equal(img.source, images.second);
    await expectApiError(d.client.deleteImage(img.id), 409, 'KILN_ERR_IMAGE_IN_USE');
    const vm2 = await d.client.createVm({ image: images.second, cmd: ['echo', 'override-ran'] });
    await waitForState(d.client, vm2.id, ['stopped', 'failed']);
    assert.match(await d.client.logs(vm2.id), /override-ran/);
    assert.doesNotMatch(await d.client.logs(vm2.id), /second image/);
    await d.client.deleteVm(vm.id);
    await d.client.deleteVm(vm2.id);
    await d.client.deleteImage(img.id);
  });

  test('errors: unknown repository, bad reference; nothing half-made is left', async () => {
    await expectApiError(d.client.pullImage({ ref: `${registry.host}/kiln-test/nope:v1` }, { wait: true }), 404, 'KILN_ERR_MANIFEST_NOT_FOUND');
    await expectApiError(d.client.pullImage({ ref: 'a//b' }), 400, 'KILN_ERR_IMAGE_REF_INVALID');
    assert.ok(!(await d.client.listImages()).some((i) => i.state === 'pulling' || i.name.includes('nope')));
    const left = (await fs.readdir(path.join(d.stateDir, 'images'))).filter((f) => f.startsWith('.staging-') || f.includes('.tmp-'));
    assert.deepEqual(left, []);
  });

  test('kiln images pull: progress on stderr, the ready image on stdout', async () => {
    const bin = new URL('../bin/kiln.js', import.meta.url).pathname;
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, '--api', d.url, '--state-dir', d.stateDir, '--json', 'images', 'pull', images.base]);
    const img = JSON.parse(stdout) as { state: string; source: string; format: string };
    assert.equal(img.state, 'ready');
    assert.equal(img.source, images.base);
    assert.match(stderr, /building squashfs root filesystem/, `stderr: ${stderr}`);
    const again = await promisify(execFile)(process.execPath, [bin, '--api', d.url, '--state-dir', d.stateDir, 'images', 'pull', images.base]);
    assert.match(again.stdout, /squashfs/, 'a second pull is a no-op that prints the image');
  });

  test('gc removes blobs and files of deleted images, keeps what images use', async () => {
    const base = await d.client.pullImage({ ref: images.base }, { wait: true });
    const features = await d.client.getImage(images.features);
    await d.client.deleteImage(features.id);
    const r = await d.client.gcImages();
    assert.ok(r.removed_blobs >= 3, `blobs only 'features' used are gone: ${JSON.stringify(r)}`);
    const blobs = await fs.readdir(path.join(d.stateDir, 'blobs', 'sha256'));
    for (const l of base.layers) assert.ok(blobs.includes(l.slice(7)), `blob ${l} of a live image kept`);
    for (const l of features.layers.filter((x) => !base.layers.includes(x) && !(x.length === 0))) {
      // The zstd copy shares no blob with the gzip one except the config.
      const keptByOther = (await d.client.listImages()).some((i) => i.layers.includes(l));
      assert.equal(blobs.includes(l.slice(7)), keptByOther, `blob ${l}`);
    }
    assert.ok(!(await fs.stat(path.join(d.stateDir, 'images', `${features.manifest_digest!.replace(':', '-')}-squashfs`)).catch(() => null)));
    // The image still boots after GC.
    const vm = await d.client.createVm({ image: base.id, cmd: ['/bin/sh', '-c', 'echo still-boots'] });
    await waitForState(d.client, vm.id, ['stopped', 'failed']);
    assert.match(await d.client.logs(vm.id), /still-boots/);
    await d.client.deleteVm(vm.id);
  });
});

describe('conversion failure hygiene', () => {
  test('disk full while converting: KILN_ERR_NO_SPACE, no record, no temp files; retry succeeds', async () => {
    const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-test-full-'));
    const imagesDir = path.join(stateDir, 'images');
    await fs.mkdir(imagesDir);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'kiln-test-full', imagesDir]);
    const full = await startKilnd({ stateDir });
    try {
      // Leave room for a few hundred KiB: the flattened busybox alone is ~2 MiB.
      const used = Number((await run('df', ['--output=used', '-B1', imagesDir])).stdout.split('\n')[1]);
      await run('mount', ['-o', `remount,size=${used + 512 * 1024}`, imagesDir]);
      const err = await expectApiError(full.client.pullImage({ ref: images.features }, { wait: true }), 507, 'KILN_ERR_NO_SPACE');
      assert.match(err.message, /no space/i);
      assert.ok(!(await full.client.listImages()).some((i) => i.name === images.features), 'no half image visible');
      const left = (await fs.readdir(imagesDir)).filter((f) => f.startsWith('.staging-') || f.includes('.tmp-') || f.startsWith('sha256-'));
      assert.deepEqual(left, [], 'no temp files');
      await run('mount', ['-o', 'remount,size=64m', imagesDir]);
      const ok = await full.client.pullImage({ ref: images.features }, { wait: true });
      assert.equal(ok.state, 'ready');
    } finally {
      await full.stop();
      await run('umount', [imagesDir]).catch(() => {});
      await full.dispose();
    }
  });
});

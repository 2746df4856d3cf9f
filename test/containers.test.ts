// Containers end to end (issue #7): a multi-layer image pushed to a loopback docker-registry,
// run through kilnd's API, SDK and CLI as real microVMs.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { ContainerLogItem, KilnClient } from '../src/sdk/client.ts';
import { run } from '../src/util/process.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, vmmPids, type TestDaemon } from './helpers/kilnd.ts';
import { startRegistry, type TestRegistry } from './helpers/registry.ts';
import { buildBusyboxTree } from '../src/image/default-image.ts';
import { OciLayoutBuilder } from './helpers/test-images.ts';
import { runKiln } from './helpers/kiln-cli.ts';
import { freePort } from './helpers/ports.ts';
import { eventually } from './helpers/until.ts';

const skip = BACKEND_SKIP;
let d: TestDaemon;
let registry: TestRegistry;
let builder: OciLayoutBuilder;
let allowed: string;
let image: string;
let c: KilnClient;

/**
 * The app image: a busybox layer + a layer with users/groups + a layer with the entrypoint;
 * 'second': the busybox layer + one file.
 */
async function buildImages(b: OciLayoutBuilder): Promise<void> {
  await b.build('base', { layers: [buildBusyboxTree], config: { cmd: ['/bin/sh'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'] } });
  await b.build('second', { from: 'base', layers: [async (rootfs) => fs.writeFile(path.join(rootfs, 'etc/second'), 'second image\n')], config: { cmd: ['cat', '/etc/second'] } });
  await b.build('app', {
    from: 'base',
    layers: [
      async (rootfs) => {
        await fs.writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678:app:/home/app:/bin/sh\n');
        await fs.writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\nappgrp:x:5678:\nextra:x:4000:app\n');
      },
      async (rootfs) => {
        await fs.mkdir(path.join(rootfs, 'app'), { recursive: true });
        await fs.writeFile(path.join(rootfs, 'app/entry.sh'), '#!/bin/sh\necho "entry: $GREETING"\necho "to stderr" >&2\nexec "$@"\n', { mode: 0o755 });
      },
    ],
    config: {
      entrypoint: ['/app/entry.sh'],
      cmd: ['echo', 'default-cmd'],
      env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'GREETING=hello'],
      workdir: '/app',
    },
  });
}

before(async () => {
  if (skip) return;
  allowed = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ctr-allowed-'));
  await fs.writeFile(path.join(allowed, 'input.txt'), 'from the host\n');
  registry = await startRegistry();
  builder = await OciLayoutBuilder.create();
  await buildImages(builder);
  image = `${registry.host}/kiln-test/app:v1`;
  await builder.push('app', image);
  await builder.push('second', `${registry.host}/kiln-test/second:v1`);
  d = await startKilnd({ env: { KILN_ALLOWED_ROOTS: allowed, KILN_STOP_GRACE_MS: '3000' } });
  c = d.client;
});

after(async () => {
  await d?.dispose();
  await registry?.stop();
  await builder?.remove();
  if (allowed) await fs.rm(allowed, { recursive: true, force: true });
});

/** Follows a container's output until `re` matches (or it ends); returns what it saw. */
async function waitForOutput(id: string, re: RegExp, timeoutMs = 180_000): Promise<string> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  let seen = '';
  try {
    for await (const item of c.containerLogStream(id, { follow: true, signal: ac.signal })) {
      if ('end' in item) break;
      seen += item.text + (item.partial ? '' : '\n');
      if (re.test(seen)) return seen;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  assert.match(seen, re);
  return seen;
}

/** Follows until the container ends for good; returns its output and the end. */
async function runToEnd(id: string, timeoutMs = 300_000): Promise<{ out: ContainerLogItem[]; end: { state: string; exit_code: number | null } }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const out: ContainerLogItem[] = [];
  try {
    for await (const item of c.containerLogStream(id, { follow: true, signal: ac.signal })) {
      if ('end' in item) return { out, end: item.end };
      out.push(item);
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  throw new Error(`container ${id} did not end within ${timeoutMs} ms`);
}

const text = (items: ContainerLogItem[], stream?: string) =>
  items.filter((i): i is Extract<ContainerLogItem, { text: string }> => 'text' in i && (!stream || i.stream === stream)).map((i) => i.text).join('\n');

/** The container's server starts after the VM is up: retried until it answers. */
function httpGet(port: number, pathName: string): Promise<string> {
  return eventually(`127.0.0.1:${port}${pathName} to answer`, async () => (await fetch(`http://127.0.0.1:${port}${pathName}`, { signal: AbortSignal.timeout(5000) })).text(), 60_000);
}

/** Everything a container could leave behind on the host. */
async function footprint() {
  const taps = (await run('ip', ['-o', 'link', 'show', 'master', d.network.bridge]).catch(() => ({ stdout: '' }))).stdout.trim().split('\n').filter(Boolean).length;
  return {
    vms: (await c.listVms()).length,
    containers: (await c.listContainers({ all: true })).length,
    runtimeDirs: (await fs.readdir(path.join(d.stateDir, 'vms')).catch(() => [])).length,
    logDirs: (await fs.readdir(path.join(d.stateDir, 'containers')).catch(() => [])).length,
    vmms: (await vmmPids(d.stateDir)).length,
    taps,
  };
}

test('entrypoint runs with -e, -p, -v ro and rw; logs -f streams; exit codes are recorded', { skip }, async () => {
  const vol = await c.createVolume('ctr-state', 64);
  const port = await freePort();
  const web = await c.createContainer({
    image,
    name: 'web',
    env: { GREETING: 'hi' },
    ports: [{ host: port, guest: 8080 }],
    volumes: [
      { volume: vol.id, target: '/state' },
      { host_path: allowed, target: '/ro', read_only: true },
    ],
    cmd: ['sh', '-c', [
      'cat /ro/input.txt',
      'echo written-by-web > /state/out.txt',
      '(echo x > /ro/x) 2>/dev/null && echo ro-WRITABLE || echo ro-refused',
      'mkdir -p /www && echo served > /www/index.html && httpd -p 8080 -h /www',
      'trap "echo got-term; exit 7" TERM',
      'i=0; while :; do i=$((i+1)); echo tick $i; sleep 1; done',
    ].join('\n')],
  }, { wait: true });
  assert.equal(web.state, 'running');
  assert.deepEqual(web.command.slice(0, 2), ['/app/entry.sh', 'sh']);

  // logs -f: lines arrive while the process runs (tick 3 is printed seconds after start).
  const seen = await waitForOutput(web.id, /tick 3\n/);
  assert.match(seen, /^entry: hi\n/m, 'the image entrypoint ran, with the request env over the image env');
  assert.match(seen, /from the host/, 'read-only host directory mounted');
  assert.match(seen, /ro-refused/);
  assert.doesNotMatch(seen, /ro-WRITABLE/);
  assert.equal(await httpGet(port, '/index.html'), 'served\n', 'published port reaches the container');

  // stdout and stderr are told apart, each piece timestamped by kilnd.
  const recs: ContainerLogItem[] = [];
  for await (const r of c.containerLogStream(web.id)) recs.push(r);
  assert.match(text(recs, 'stderr'), /to stderr/);
  assert.doesNotMatch(text(recs, 'stdout'), /to stderr/);
  assert.ok(recs.every((r) => 'ts' in r && !Number.isNaN(Date.parse(r.ts))));
  const withTs = await c.containerLogs(web.id, { timestamps: true });
  assert.match(withTs, /^\d{4}-\d\d-\d\dT[\d:.]+Z entry: hi$/m);
  // Kernel lines stay on the VM console, not in the container's log.
  assert.doesNotMatch(await c.containerLogs(web.id), /kiln:|Linux version|virtio/);

  // exec into it; stats from the agent.
  const ex = await c.execContainer(web.id, { cmd: ['cat', '/state/out.txt'] });
  assert.equal(ex.stdout, 'written-by-web\n');
  const st = await c.containerStats(web.id, { intervalMs: 300 });
  assert.ok(st.memory_limit_bytes > 64 * 1024 * 1024 && st.memory_usage_bytes > 0 && st.memory_usage_bytes < st.memory_limit_bytes);
  assert.ok(st.workload_running && st.workload_rss_bytes > 0);
  assert.ok(st.cpu_percent >= 0 && st.guest_cpu_percent >= st.cpu_percent - 1);

  // stop: SIGTERM, the trap's exit code is recorded.
  const stopped = await c.stopContainer(web.id);
  assert.equal(stopped.state, 'exited');
  assert.equal(stopped.exit_code, 7);
  assert.match(await c.containerLogs(web.id), /got-term/);

  // The read-write volume kept what the first container wrote; user by name with its
  // supplementary group, a workdir created on demand, and the exit code of a plain exit.
  const reader = await c.createContainer({
    image,
    user: 'app',
    workdir: '/made/here',
    volumes: [{ volume: vol.id, target: '/state', read_only: true }],
    cmd: ['sh', '-c', 'cat /state/out.txt; echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) pwd=$(pwd) home=$HOME"; exit 3'],
  });
  const { out, end } = await runToEnd(reader.id);
  assert.deepEqual(end, { state: 'exited', exit_code: 3, removed: false });
  assert.match(text(out), /written-by-web/);
  assert.match(text(out), /uid=1234 gid=5678 groups=5678 4000 pwd=\/made\/here home=\/home\/app/);
  assert.equal((await c.getContainer(reader.id)).exit_code, 3);

  // The image's own entrypoint + cmd when nothing is overridden; --entrypoint resets the cmd.
  const plain = await c.createContainer({ image });
  assert.match(text((await runToEnd(plain.id)).out), /entry: hello\n?[\s\S]*default-cmd/);
  const ep = await c.createContainer({ image, entrypoint: ['/bin/echo'], cmd: ['only', 'this'] });
  const epRun = await runToEnd(ep.id);
  assert.equal(text(epRun.out), 'only this');
  assert.equal(epRun.end.exit_code, 0);

  for (const id of [web.id, reader.id, plain.id, ep.id]) await c.removeContainer(id);
  await c.deleteVolume(vol.id);
});

test('stop kills a process that ignores SIGTERM after the grace; on-failure:3 restarts three times with backoff', { skip }, async () => {
  const stubborn = await c.createContainer({ image, cmd: ['sh', '-c', 'trap "" TERM; echo ignoring; while :; do sleep 1; done'] }, { wait: true });
  await waitForOutput(stubborn.id, /ignoring/);
  const killed = await c.stopContainer(stubborn.id, { graceMs: 1500 });
  assert.equal(killed.state, 'exited');
  assert.equal(killed.exit_code, 137, 'SIGKILL after the grace period');

  const flaky = await c.createContainer({ image, restart: 'on-failure:3', cmd: ['sh', '-c', 'echo attempt; exit 5'] });
  const events = await c.subscribe({ vm: flaky.id });
  const delays: number[] = [];
  const collect = (async () => {
    for await (const e of events) {
      if (e.type === 'container.restarting') delays.push(Number(e.delay_ms));
      if (e.type === 'container.exited') return e;
    }
  })();
  const exited = await collect;
  assert.equal(exited?.exit_code, 5);
  assert.deepEqual(delays, [100, 200, 400], 'backoff doubles from 100 ms');
  const done = await c.getContainer(flaky.id);
  assert.equal(done.state, 'exited');
  assert.equal(done.restart_count, 3);
  assert.equal(done.boot_count, 4);
  assert.equal(done.exit_code, 5);
  assert.equal((await c.containerLogs(flaky.id)).match(/attempt/g)?.length, 4, 'each run logged once');
  for (const id of [stubborn.id, flaky.id]) await c.removeContainer(id);

  // auto_remove (detached --rm): kilnd removes it when it exits, with its VM and its log.
  const once = await c.createContainer({ image, auto_remove: true, cmd: ['sh', '-c', 'echo bye; exit 2'] });
  for await (const e of await c.subscribe({ vm: once.id, since: 0 })) if (e.type === 'container.removed') break;
  await expectApiError(c.getContainer(once.id), 404, 'KILN_ERR_CONTAINER_NOT_FOUND');
  await expectApiError(c.getVm(once.id), 404, 'KILN_ERR_VM_NOT_FOUND');
  assert.equal(await fs.stat(path.join(d.stateDir, 'containers', once.id)).catch(() => null), null);
});

test('10 containers from one image start concurrently; the image is stored once', { skip }, async () => {
  const ref = `${registry.host}/kiln-test/second:v1`;
  const before = await footprint();
  const started = await Promise.all(Array.from({ length: 10 }, (_, i) =>
    c.createContainer({ image: ref, name: `many-${i}`, memory_mib: 128, cmd: ['sh', '-c', 'cat /etc/second; while :; do sleep 5; done'] }, { wait: true })));
  assert.ok(started.every((x) => x.state === 'running'));
  assert.equal(new Set(started.map((x) => x.image_id)).size, 1, 'one image record for all ten');
  const images = (await c.listImages()).filter((i) => i.source?.endsWith('kiln-test/second:v1'));
  assert.equal(images.length, 1);
  const rootfsFiles = (await fs.readdir(path.join(d.stateDir, 'images'))).filter((n) => n.includes(images[0]!.digest.replace(':', '-')));
  assert.equal(rootfsFiles.length, 1, `one root filesystem file for the digest: ${rootfsFiles.join(', ')}`);
  for (const x of started) await waitForOutput(x.id, /second image/);
  await Promise.all(started.map((x) => c.removeContainer(x.id, { force: true })));
  assert.deepEqual(await footprint(), before);
});

test('bad input is a clear 4xx and leaves nothing behind', { skip }, async () => {
  const keeper = await c.createContainer({ image, name: 'keeper', ports: [{ host: await freePort(), guest: 80 }], cmd: ['sh', '-c', 'echo keeper-up; while :; do sleep 5; done'] }, { wait: true });
  // Its log exists once it said something.
  await waitForOutput(keeper.id, /keeper-up/);
  const before = await footprint();
  const port = keeper.ports[0]!.host;
  const hostListener = net.createServer().listen(0, '0.0.0.0');
  await new Promise((r) => hostListener.once('listening', r));
  const busy = (hostListener.address() as net.AddressInfo).port;
  try {
    await expectApiError(c.createContainer({ image: 'no-such-image' }), 404, 'KILN_ERR_IMAGE_NOT_FOUND');
    await expectApiError(c.createContainer({ image: `${registry.host}/kiln-test/nope:v1` }), 404, 'KILN_ERR_MANIFEST_NOT_FOUND');
    await expectApiError(c.createContainer({ image: `${registry.host}/Kiln-Test/UPPER:v1` }), 400, 'KILN_ERR_IMAGE_REF_INVALID');
    await expectApiError(c.createContainer({ image: 'a/b:c:d' }), 400, 'KILN_ERR_IMAGE_REF_INVALID');
    await expectApiError(c.createContainer({ image, ports: [{ host: port, guest: 80 }] }), 409, 'KILN_ERR_PORT_CONFLICT');
    await expectApiError(c.createContainer({ image, ports: [{ host: busy, guest: 80 }] }), 409, 'KILN_ERR_PORT_CONFLICT');
    await expectApiError(c.createContainer({ image, volumes: [{ host_path: '/etc', target: '/x', read_only: true }] }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
    await expectApiError(c.createContainer({ image, volumes: [{ host_path: allowed, target: '/x', read_only: false }] }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.createContainer({ image, volumes: [{ volume: 'no-such-volume', target: '/x' }] }), 404, 'KILN_ERR_VOLUME_NOT_FOUND');
    await expectApiError(c.createContainer({ image, name: 'keeper' }), 409, 'KILN_ERR_NAME_CONFLICT');
    await expectApiError(c.createContainer({ image, restart: 'sometimes' }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.createContainer({ image, restart: 'always', auto_remove: true }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.createContainer({ image, entrypoint: [] }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.createContainer({ image, user: 'bad user' }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.createContainer({ image, memory_mib: 64 }), 400, 'KILN_ERR_VALIDATION');
    await expectApiError(c.getContainer('no-such-container'), 404, 'KILN_ERR_CONTAINER_NOT_FOUND');
    await expectApiError(c.removeContainer('keeper'), 409, 'KILN_ERR_INVALID_STATE');
    assert.deepEqual(await footprint(), before, 'no VM record, container, runtime dir, log, VMM process or tap left behind');
    // A plain VM is not a container.
    const vm = await c.createVm({ network: 'none' });
    await expectApiError(c.getContainer(vm.id), 404, 'KILN_ERR_CONTAINER_NOT_FOUND');
    await c.deleteVm(vm.id);
  } finally {
    hostListener.close();
  }
  await c.removeContainer(keeper.id, { force: true });
});

test('a user the image does not have fails the container with the reason', { skip }, async () => {
  const x = await c.createContainer({ image, user: 'ghost', cmd: ['true'] });
  const { end } = await runToEnd(x.id);
  assert.equal(end.state, 'failed');
  const got = await c.getContainer(x.id);
  assert.match(got.state_reason ?? '', /unable to find user ghost/);
  await c.removeContainer(x.id);
});

test('kiln run / ps / logs / stop / rm', { skip }, async () => {
  const kiln = (...args: string[]) => runKiln(d, args);

  // Attached: output streams through (stdout and stderr apart), the exit code is the container's; --rm removes it.
  const attached = await kiln('run', '--rm', '--name', 'cli-once', '-e', 'GREETING=from-cli', image, 'sh', '-c', 'echo out-line; echo err-line >&2; exit 4');
  assert.equal(attached.code, 4, attached.stderr);
  assert.match(attached.stdout, /entry: from-cli\nout-line\n/);
  assert.match(attached.stderr, /err-line/);
  assert.doesNotMatch(attached.stdout, /err-line/);
  assert.doesNotMatch((await kiln('ps', '-a')).stdout, /cli-once/, '--rm removed it');

  const detached = await kiln('--json', 'run', '-d', '--name', 'cli-bg', '-w', '/tmp', image, 'sh', '-c', 'echo started in $(pwd); while :; do sleep 5; done');
  assert.equal(detached.code, 0, detached.stderr);
  assert.equal(JSON.parse(detached.stdout).state, 'running');
  assert.match((await kiln('ps')).stdout, /cli-bg[\s\S]*running/);
  await waitForOutput('cli-bg', /started in \/tmp/);
  assert.match((await kiln('logs', '-t', 'cli-bg')).stdout, /^\S+Z started in \/tmp$/m);
  assert.equal(JSON.parse((await kiln('--json', 'pause', 'cli-bg')).stdout).state, 'paused');
  assert.equal(JSON.parse((await kiln('--json', 'unpause', 'cli-bg')).stdout).state, 'running');
  const ex = await kiln('exec', 'cli-bg', '--', 'sh', '-c', 'echo in-container $(pwd)');
  assert.equal(ex.code, 0, ex.stderr);
  assert.match(ex.stdout, /in-container \/tmp/, 'exec runs in the container’s workdir');
  const stats = await kiln('stats', '--interval', '200', 'cli-bg');
  assert.equal(stats.code, 0, stats.stderr);
  assert.match(stats.stdout, /CPU %[\s\S]*cli-bg\s.*%.*MiB \/ \d/);
  const rmRunning = await kiln('rm', 'cli-bg');
  assert.equal(rmRunning.code, 1);
  assert.match(rmRunning.stderr, /KILN_ERR_INVALID_STATE/);
  const stop = await kiln('--json', 'stop', '-t', '1', 'cli-bg');
  assert.equal(JSON.parse(stop.stdout).state, 'exited');
  assert.match((await kiln('ps', '-a')).stdout, /cli-bg[\s\S]*exited \(143\)/);
  assert.equal((await kiln('rm', 'cli-bg')).code, 0);
  assert.doesNotMatch((await kiln('ps', '-a')).stdout, /cli-bg/);
});


test('a kilnd restart keeps the restart policy state and the log (no piece lost or repeated)', { skip }, async () => {
  const x = await c.createContainer({ image, restart: 'on-failure:2', cmd: ['sh', '-c', 'echo run $(cat /proc/sys/kernel/random/uuid); sleep 2; exit 9'] });
  const events = await c.subscribe({ vm: x.id });
  for await (const e of events) if (e.type === 'container.restarting') break;
  // kilnd dies between restarts; the VMs keep running without it.
  await d.kill();
  d = await startKilnd({ stateDir: d.stateDir, network: d.network, env: { KILN_ALLOWED_ROOTS: allowed, KILN_STOP_GRACE_MS: '3000' } });
  c = d.client;
  const { end } = await runToEnd(x.id);
  assert.deepEqual(end, { state: 'exited', exit_code: 9, removed: false });
  const got = await c.getContainer(x.id);
  assert.equal(got.restart_count, 2, 'the count went on from where the old kilnd left it');
  assert.equal(got.boot_count, 3);
  const runs = (await c.containerLogs(x.id)).match(/^run \S+$/gm) ?? [];
  assert.equal(runs.length, 3, runs.join('\n'));
  assert.equal(new Set(runs).size, 3);
  await c.removeContainer(x.id);
});

// The path a template's snapshot takes on a real host, through the stand-in Firecracker (and
// stand-in jailer, which really drops to the jail's uid): boot, snapshot, the template's
// runtime dir deleted (as templates.ts does), two clones restored from the one snapshot.
// Firecracker reopens every drive and the vsock socket at the paths the snapshot recorded
// (snapshot-support.md) and has no drive override, so each clone must find its own files at
// the same paths: its path view or its jail. On both API versions, with and without the jailer.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import type net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { deleteLink, ipBatch, tuntapAddCommand } from '../../tools/ip.ts';
import type { VmmSnapshot } from '../driver.ts';
import { FirecrackerDriver, type FirecrackerVmSpec } from './firecracker-driver.ts';
import type { FirecrackerInstance } from './instance.ts';
import { contractProblems, makeAssets, readRecords, tempDir, writeFakeBinaries, type Assets, type FakeBinaries } from './testing/harness.ts';
import { SPEC_VERSIONS, specFile } from './testing/paths.ts';
import { loadSpec } from './testing/spec-validator.ts';

/** The jail's uid: an unprivileged one, so the kernel checks every file the VMM opens. */
const JAIL_UID = 65534;

for (const version of SPEC_VERSIONS) {
  for (const mode of ['path view', 'jailer'] as const) {
    describe(`clones of one template: Firecracker v${version}, ${mode}`, () => {
      let dir: string;
      let bins: FakeBinaries;
      let assets: Assets;
      let n = 0;
      const jailed = mode === 'jailer';

      before(async () => {
        dir = await tempDir(`cl${version.replace(/\./g, '')}${jailed ? 'j' : 'v'}`);
        // The stand-in jailer cannot chroot (it is a Node program): the jail uid walks down to its jail.
        await fs.chmod(dir, 0o755);
        [bins, assets] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir)]);
      });
      after(() => fs.rm(dir, { recursive: true, force: true }));

      async function driver(binary = bins.firecracker) {
        const record = path.join(dir, `requests-${++n}.jsonl`);
        // The test's own record of requests, written by the stand-in as the jail uid.
        await fs.writeFile(record, '');
        await fs.chmod(record, 0o666);
        const d = new FirecrackerDriver({
          binary,
          socketTimeoutMs: 20_000,
          ...(jailed
            ? { jailer: { binary: bins.jailer, uid: JAIL_UID, gid: JAIL_UID, chrootBaseDir: path.join(dir, 'srv'), cgroupBases: [path.join(dir, 'cgroup')] } }
            : {}),
          env: {
            ...process.env,
            FAKE_FC_SPEC: specFile(version),
            FAKE_FC_VERSION: version,
            FAKE_FC_RECORD: record,
            FAKE_FC_GUEST_ECHO_PORTS: '52',
            FAKE_JAILER_CGROUP_BASE: path.join(dir, 'cgroup'),
          },
        });
        return { d, record };
      }

      /** A VM laid out as kilnd lays it out (vm-spec.ts, agent-link.ts): per-VM scratch and config in its runtime dir. */
      async function vmSpec(id: string): Promise<FirecrackerVmSpec> {
        const runtimeDir = path.join(dir, 'vms', id);
        await fs.mkdir(runtimeDir, { recursive: true });
        await fs.writeFile(path.join(runtimeDir, 'scratch.ext4'), `scratch of ${id}`);
        await fs.writeFile(path.join(runtimeDir, 'config.img'), `config of ${id}`);
        return {
          id,
          runtimeDir,
          vcpus: 1,
          memoryMib: 256,
          accelerator: 'kvm',
          kernel: { path: assets.kernel, initrd: assets.initrd, cmdline: 'console=ttyS0 reboot=k panic=1' },
          drives: [
            { id: 'root', path: assets.rootImage, readOnly: true },
            { id: 'scratch', path: path.join(runtimeDir, 'scratch.ext4'), readOnly: false },
            { id: 'config', path: path.join(runtimeDir, 'config.img'), readOnly: true },
          ],
          vsock: { guestCid: 3, udsPath: path.join(runtimeDir, 'vsock', 'vsock.sock') },
        };
      }

      async function guestDialsHost(vm: FirecrackerInstance): Promise<void> {
        let got!: (s: string) => void;
        const arrived = new Promise<string>((r) => (got = r));
        const server = await vm.listenVsock(1025, (c: net.Socket) => {
          c.setEncoding('utf8');
          c.on('data', (x: string) => got(x));
        });
        try {
          await vm.writeConsole(`dial 1025 hello-from-${vm.pid}\n`);
          assert.equal(await arrived, `hello-from-${vm.pid}\n`);
        } finally {
          server.close();
        }
      }

      test('boot, snapshot, template gone, two clones: each reopens its own drives and socket at paths identical across VM ids', async () => {
        const spec = await loadSpec(specFile(version));
        const tpl = await driver();
        const tplSpec = await vmSpec('tpl-1');
        const vm = await tpl.d.start(tplSpec);
        const snapDir = path.join(dir, 'snapshots', 'tpl-1');
        await fs.mkdir(snapDir, { recursive: true });
        let snap: VmmSnapshot;
        try {
          await guestDialsHost(vm);
          snap = await vm.snapshot(snapDir, { resume: false });
        } finally {
          await vm.kill();
        }
        assert.deepEqual(contractProblems(spec, await readRecords(tpl.record)), []);
        if (jailed) {
          await assert.rejects(fs.stat(vm.jail!.dir), { code: 'ENOENT' }, 'the jail goes with its VMM');
          await assert.rejects(fs.stat(path.join(dir, 'cgroup', 'firecracker', 'tpl-1')), { code: 'ENOENT' }, 'and its cgroup dir');
        }
        // What the snapshot recorded names no VM.
        const recorded = JSON.parse(await fs.readFile(snap.stateFile, 'utf8')) as { drives: { path_on_host: string }[]; vsock: { uds_path: string } };
        for (const p of [...recorded.drives.map((d) => d.path_on_host), recorded.vsock.uds_path]) assert.doesNotMatch(p, /tpl-1/, p);
        await fs.rm(tplSpec.runtimeDir, { recursive: true, force: true });

        const loads: unknown[] = [];
        const clones: FirecrackerInstance[] = [];
        try {
          for (const id of ['clone-a', 'clone-b']) {
            const c = await driver();
            const cs = await vmSpec(id);
            const clone = await c.d.restore(cs, snap!);
            clones.push(clone);
            await clone.resume();
            const recs = await readRecords(c.record);
            assert.deepEqual(contractProblems(spec, recs), []);
            const load = recs.find((r) => r.path === '/snapshot/load')!;
            loads.push(load.body);
            // The clone's own files, not the template's: Firecracker followed the clone's view/jail.
            // (The same inode: a jail holds hard links.)
            const real = (p: string) => fs.realpath(p);
            const sameFile = async (opened: string | undefined, want: string, what: string) => {
              const [a, b] = await Promise.all([fs.stat(opened!), fs.stat(want)]);
              assert.ok(a.ino === b.ino && a.dev === b.dev, `${what}: opened ${opened}, not ${want}`);
            };
            await sameFile(load.opened!['drive:scratch'], cs.drives[1]!.path, 'its own writable scratch disk');
            await sameFile(load.opened!['drive:config'], cs.drives[2]!.path, 'its own config drive');
            await sameFile(load.opened!['drive:root'], assets.rootImage, 'the image');
            assert.equal(load.opened!.vsock, path.join(await real(path.dirname(cs.vsock!.udsPath!)), 'vsock.sock'));
            const { socket } = await clone.connectVsock(52);
            socket.destroy();
            await guestDialsHost(clone);
          }
          assert.deepEqual(loads[0], loads[1], 'both clones are given the same paths');
          assert.equal((loads[0] as { vsock_override?: unknown }).vsock_override, undefined, 'no override needed, on 1.13 either');
        } finally {
          for (const c of clones) await c.kill();
        }
      });

      if (jailed) {
        test('the jail is named after the resolved binary (a symlinked firecracker)', async () => {
          const real = path.join(dir, 'bin', 'firecracker-v1.13.1-x86_64');
          await fs.copyFile(bins.firecracker, real);
          await fs.chmod(real, 0o755);
          const link = path.join(dir, 'bin', 'fc-current');
          await fs.symlink(real, link);
          const { d } = await driver(link);
          const vm = await d.start(await vmSpec('link-1'));
          const odd = path.join(dir, 'bin', 'vmm-binary');
          await fs.copyFile(bins.firecracker, odd);
          await fs.chmod(odd, 0o755);
          const { d: oddDriver } = await driver(odd);
          await assert.rejects(oddDriver.start(await vmSpec('link-2')), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /contains "firecracker"/.test(e.message));
          try {
            assert.equal(vm.jail!.execName, 'firecracker-v1.13.1-x86_64');
            assert.equal((await vm.api.describeInstance()).state, 'Running');
          } finally {
            await vm.kill();
          }
        });

        test('the jailed VMM opens a tap made for its uid; a root-only tap is refused before anything is spawned, naming the fix', async () => {
          const owned = `kfo${process.pid % 10000}${version.replace(/\./g, '').slice(-2)}`;
          const rootOnly = `kfr${process.pid % 10000}${version.replace(/\./g, '').slice(-2)}`;
          await ipBatch([tuntapAddCommand(owned, { uid: JAIL_UID, gid: JAIL_UID }), tuntapAddCommand(rootOnly)]);
          try {
            const { d, record } = await driver();
            const vm = await d.start({ ...(await vmSpec('tap-1')), nics: [{ tap: owned, mac: '02:00:00:00:00:09' }] });
            try {
              assert.equal((await readRecords(record)).find((r) => r.path === '/network-interfaces/eth0')?.status, 204);
            } finally {
              await vm.kill();
            }
            const bad = await driver();
            await assert.rejects(
              bad.d.start({ ...(await vmSpec('tap-2')), nics: [{ tap: rootOnly, mac: '02:00:00:00:00:0a' }] }),
              (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && e.message.includes(`ip tuntap add dev ${rootOnly} mode tap user ${JAIL_UID} group ${JAIL_UID}`),
            );
            assert.deepEqual(await readRecords(bad.record), [], 'no VMM ran');
          } finally {
            await Promise.allSettled([deleteLink(owned), deleteLink(rootOnly)]);
          }
        });

        test('a VM booted jailed boots again with the jailer turned off (its vsock dir was a link into the jail)', async () => {
          const spec = await vmSpec('switch-1');
          const jailedVm = await (await driver()).d.start(spec);
          await jailedVm.kill();
          const plain = new FirecrackerDriver({ binary: bins.firecracker, socketTimeoutMs: 20_000, env: { ...process.env, FAKE_FC_VERSION: version, FAKE_FC_GUEST_ECHO_PORTS: '52' } });
          const vm = await plain.start(spec);
          try {
            const { socket } = await vm.connectVsock(52);
            socket.destroy();
            assert.ok((await fs.lstat(path.dirname(spec.vsock!.udsPath!))).isDirectory());
          } finally {
            await vm.kill();
          }
        });

        test('a read-only file the jail uid cannot read is refused before anything is spawned', async () => {
          const s = await vmSpec('perm-1');
          const secret = path.join(dir, 'secret.img');
          await fs.writeFile(secret, 'root only', { mode: 0o600 });
          s.drives.push({ id: 'extra', path: secret, readOnly: true });
          const { d, record } = await driver();
          await assert.rejects(d.start(s), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /not readable by the jail's uid 65534/.test(e.message));
          assert.deepEqual(await readRecords(record), [], 'no VMM ran');
          await assert.rejects(fs.stat(path.join(dir, 'srv', 'firecracker', 'perm-1')), { code: 'ENOENT' }, 'no jail left behind');
        });
      }
    });
  }
}

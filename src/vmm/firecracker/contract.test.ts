// Contract tests: the driver, spawning a stand-in `firecracker`, against both API definitions.
// Every request the stand-in receives is validated against the definition (in the stand-in,
// which refuses it with a 400 as Firecracker would, and again here); a request the
// definition rejects fails the test.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import type { VmSpec } from '../driver.ts';
import { FirecrackerApiClient } from './api-client.ts';
import { FirecrackerDriver, type FirecrackerVmSpec } from './firecracker-driver.ts';
import type { FirecrackerInstance } from './instance.ts';
import {
  baseSpec,
  contractProblems,
  makeAssets,
  opsOf,
  readRecords,
  tempDir,
  waitForText,
  writeFakeBinaries,
  type Assets,
  type FakeBinaries,
} from './testing/harness.ts';
import { SPEC_VERSIONS, specFile } from './testing/paths.ts';
import { loadSpec, type FirecrackerSpec } from './testing/spec-validator.ts';
import { StandInFirecracker } from './testing/stand-in.ts';
import { viewDrivePath, viewVsockPath } from './path-view.ts';

const limiter = { bandwidth: { size: 10_000_000, refillTimeMs: 100, oneTimeBurst: 1_000_000 }, ops: { size: 1000, refillTimeMs: 100 } };

function fullSpec(dir: string, assets: Assets, id: string): FirecrackerVmSpec {
  return baseSpec(dir, assets, id, {
    machine: { trackDirtyPages: true, smt: false },
    driveOptions: { 'scratch-1': { rateLimiter: limiter, cacheType: 'Writeback' } },
    network: [{ ifaceId: 'eth0', hostDevName: 'tap-vm1', guestMac: 'AA:FC:00:00:00:01', rxRateLimiter: limiter, txRateLimiter: limiter }],
    vsock: { guestCid: 3 },
    entropy: { rateLimiter: { bandwidth: { size: 1000, refillTimeMs: 100 } } },
    balloon: { amountMib: 0, deflateOnOom: true, statsPollingIntervalS: 1 },
    mmds: { data: { latest: { 'meta-data': { 'instance-id': id } } }, ipv4Address: '169.254.170.2' },
    logLevel: 'Info',
  });
}

for (const version of SPEC_VERSIONS) {
  describe(`Firecracker v${version} API contract`, () => {
    let dir: string;
    let bins: FakeBinaries;
    let assets: Assets;
    let spec: FirecrackerSpec;
    let n = 0;
    const snapshot: { state?: string; mem?: string; vsock?: string; vsockHost?: string } = {};

    before(async () => {
      dir = await tempDir(`c${version.replace(/\./g, '')}`);
      [bins, assets, spec] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir), loadSpec(specFile(version))]);
    });
    after(() => fs.rm(dir, { recursive: true, force: true }));

    function driver(env: Record<string, string> = {}) {
      const record = path.join(dir, `requests-${++n}.jsonl`);
      const d = new FirecrackerDriver({
        binary: bins.firecracker,
        socketTimeoutMs: 20_000,
        env: { ...process.env, FAKE_FC_SPEC: specFile(version), FAKE_FC_VERSION: version, FAKE_FC_RECORD: record, FAKE_FC_GUEST_ECHO_PORTS: '52', ...env },
      });
      return { d, record };
    }

    test('the definition file is valid Swagger 2.0 and every schema compiles', () => {
      assert.equal(spec.version, version);
      assert.ok(spec.compileAll() > 50, 'schemas compiled');
    });

    test('full boot, then pause/resume, snapshots, MMDS, balloon, rate limiters, metrics, vsock, Ctrl+Alt+Del', async () => {
      const { d, record } = driver();
      const s = fullSpec(dir, assets, 'vm-1');
      const vm: FirecrackerInstance = await d.start(s);
      try {
        const boot = await readRecords(record);
        assert.deepEqual(opsOf(boot), [
          'GET /version',
          'PUT /machine-config',
          // 1.16: the serial console's rate limiter (prod-host-setup.md).
          ...(version === '1.13.1' ? [] : ['PUT /serial']),
          'PUT /boot-source',
          'PUT /drives/root',
          'PUT /drives/scratch_1',
          'PUT /network-interfaces/eth0',
          'PUT /vsock',
          'PUT /entropy',
          'PUT /balloon',
          'PUT /mmds/config',
          'PUT /mmds',
          'PUT /actions',
        ]);
        const body = (op: string) => boot.find((r) => `${r.method} ${r.path}` === op)!.body as Record<string, any>;
        assert.deepEqual(body('PUT /boot-source'), { kernel_image_path: assets.kernel, boot_args: s.kernel.cmdline, initrd_path: assets.initrd });
        assert.equal(body('PUT /drives/root').is_root_device, false);
        assert.equal(body('PUT /drives/root').is_read_only, true);
        assert.equal(body('PUT /drives/scratch_1').is_read_only, false);
        assert.deepEqual(body('PUT /drives/scratch_1').rate_limiter, {
          bandwidth: { size: 10_000_000, refill_time: 100, one_time_burst: 1_000_000 },
          ops: { size: 1000, refill_time: 100 },
        });
        assert.deepEqual(body('PUT /mmds/config'), { network_interfaces: ['eth0'], version: 'V2', ipv4_address: '169.254.170.2' });
        assert.deepEqual(body('PUT /actions'), { action_type: 'InstanceStart' });
        // Per-VM files through the VMM's path view: the same paths in every VM.
        assert.equal(body('PUT /vsock').uds_path, viewVsockPath('vsock.sock'));
        assert.equal(body('PUT /drives/scratch_1').path_on_host, viewDrivePath('scratch-1'));
        assert.equal(boot.find((r) => r.path === '/drives/scratch_1')!.opened!['drive:scratch_1'], await fs.realpath(assets.scratch));

        // Serial console: guest output lands in console.log, writeConsole reaches the guest.
        await waitForText(vm.consoleLogPath, 'Linux version 6.1.0-fake');
        await vm.writeConsole('echo hello-from-kiln\n');
        await waitForText(vm.consoleLogPath, 'hello-from-kiln');

        await vm.pause();
        await vm.resume();
        const snapDir = path.join(dir, 'snap');
        await fs.mkdir(snapDir, { recursive: true });
        snapshot.state = path.join(snapDir, 'full.vmstate');
        snapshot.mem = path.join(snapDir, 'full.mem');
        snapshot.vsockHost = vm.vsockPath;
        snapshot.vsock = viewVsockPath('vsock.sock');
        await vm.createSnapshot({ snapshotPath: snapshot.state, memFilePath: snapshot.mem, resume: true });
        await vm.createSnapshot({ snapshotPath: path.join(snapDir, 'diff.vmstate'), memFilePath: path.join(snapDir, 'diff.mem'), type: 'Diff', resume: true });
        await fs.access(snapshot.state);
        await fs.access(snapshot.mem);

        await vm.patchMmds({ latest: { 'meta-data': { hostname: 'vm-1' } } });
        assert.deepEqual(await vm.api.getMmds(), { latest: { 'meta-data': { 'instance-id': 'vm-1', hostname: 'vm-1' } } });
        await vm.setBalloon(64);
        assert.equal((await vm.balloonStats()).target_mib, 64);
        await vm.setBalloonStatsInterval(5);
        await vm.updateDrive('scratch-1', { rateLimiter: { ops: { size: 500, refillTimeMs: 1000 } } });
        await vm.updateNetworkRateLimiters('eth0', { rx: limiter, tx: { bandwidth: { size: 1, refillTimeMs: 1 } } });
        await vm.flushMetrics();
        assert.equal((await vm.api.describeInstance()).state, 'Running');

        // Hybrid vsock both ways.
        const { socket, hostPort } = await vm.connectVsock(52);
        assert.ok(hostPort > 0, 'a host port');
        socket.setEncoding('utf8');
        socket.write('ping\n');
        let echoed = '';
        for await (const chunk of socket) {
          echoed += chunk;
          if (echoed.includes('\n')) break;
        }
        assert.equal(echoed, 'ping\n');
        socket.destroy();
        let resolveGuest!: (s: string) => void;
        const fromGuest = new Promise<string>((r) => (resolveGuest = r));
        const server = await vm.listenVsock(1025, (c: net.Socket) => {
          c.setEncoding('utf8');
          c.on('data', (x: string) => resolveGuest(x));
        });
        await vm.writeConsole('dial 1025 agent-ready\n');
        assert.equal(await fromGuest, 'agent-ready\n');
        server.close();

        await vm.shutdown();
        assert.deepEqual(await vm.exited, { reason: 'guest powered off (kiln-init)', clean: true });

        const all = await readRecords(record);
        const ops = opsOf(all);
        for (const op of ['PATCH /vm', 'PUT /snapshot/create', 'PATCH /mmds', 'GET /mmds', 'PATCH /balloon', 'GET /balloon/statistics', 'PATCH /balloon/statistics', 'PATCH /drives/scratch_1', 'PATCH /network-interfaces/eth0']) {
          assert.ok(ops.includes(op), `${op} was sent`);
        }
        const creates = all.filter((r) => r.path === '/snapshot/create').map((r) => (r.body as { snapshot_type: string }).snapshot_type);
        assert.deepEqual(creates, ['Full', 'Diff']);
        const actions = all.filter((r) => r.path === '/actions').map((r) => (r.body as { action_type: string }).action_type);
        assert.deepEqual(actions, ['InstanceStart', 'FlushMetrics', 'SendCtrlAltDel']);
        assert.deepEqual(contractProblems(spec, all), []);
      } finally {
        await vm.kill();
      }
    });

    test('the common VmSpec as kilnd builds it: nics → /network-interfaces/ethN, vsock → /vsock, the driver’s command line', async () => {
      const { d, record } = driver();
      const base = baseSpec(dir, assets, 'common-1');
      // Only VmSpec fields (what src/vm/vm-spec.ts and the network layer fill), nothing Firecracker-specific.
      const common: VmSpec = {
        ...base,
        kernel: { ...base.kernel, cmdline: d.kernelCmdline('kvm', ['kiln.mode=vm']) },
        nics: [
          { tap: 'kt-common1', mac: '52:54:0a:76:00:02' },
          { tap: 'kt-common1b', mac: '52:54:0a:76:00:03' },
        ],
        vsock: { guestCid: 42 },
      };
      const vm = await d.start(common);
      try {
        const recs = await readRecords(record);
        const body = (op: string) => recs.find((r) => `${r.method} ${r.path}` === op)?.body as Record<string, unknown> | undefined;
        assert.deepEqual(body('PUT /network-interfaces/eth0'), { iface_id: 'eth0', host_dev_name: 'kt-common1', guest_mac: '52:54:0a:76:00:02' });
        assert.deepEqual(body('PUT /network-interfaces/eth1'), { iface_id: 'eth1', host_dev_name: 'kt-common1b', guest_mac: '52:54:0a:76:00:03' });
        const ops = opsOf(recs);
        assert.ok(ops.indexOf('PUT /network-interfaces/eth0') < ops.indexOf('PUT /network-interfaces/eth1'), 'guest sees them in order');
        assert.deepEqual(body('PUT /vsock'), { guest_cid: 42, uds_path: viewVsockPath('vsock.sock') });
        const bootArgs = String(body('PUT /boot-source')!.boot_args);
        assert.equal(bootArgs, 'console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce kiln.shutdown=reboot quiet kiln.mode=vm');
        assert.ok(ops.indexOf('PUT /vsock') < ops.indexOf('PUT /actions'), 'devices are attached before InstanceStart');
        const { socket } = await vm.connectVsock(52);
        socket.destroy();
        assert.deepEqual(contractProblems(spec, recs), []);
      } finally {
        await vm.kill();
      }
    });

    test('restore (File backend) keeping the snapshot’s vsock path needs no override, on any version', async () => {
      assert.ok(snapshot.state && snapshot.mem && snapshot.vsock, 'the boot test produced a snapshot');
      const { d, record } = driver();
      const s = baseSpec(dir, assets, 'vm-1', {
        network: [{ ifaceId: 'eth0', hostDevName: 'tap-vm1' }],
        vsock: { guestCid: 3, udsPath: snapshot.vsockHost },
        mmds: { data: { latest: { again: true } } },
        restore: {
          snapshotPath: snapshot.state,
          memBackend: { type: 'File', path: snapshot.mem },
          trackDirtyPages: true,
          sourceVsockPath: snapshot.vsock,
          networkOverrides: [{ ifaceId: 'eth0', hostDevName: 'tap-vm1b' }],
        },
      });
      const vm = await d.start(s);
      try {
        const recs = await readRecords(record);
        assert.deepEqual(opsOf(recs), ['GET /version', 'PUT /snapshot/load', 'PUT /mmds', 'PATCH /vm']);
        assert.deepEqual(recs[1]!.body, {
          snapshot_path: snapshot.state,
          mem_backend: { backend_type: 'File', backend_path: snapshot.mem },
          resume_vm: false,
          track_dirty_pages: true,
          network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap-vm1b' }],
        });
        assert.deepEqual(recs[3]!.body, { state: 'Resumed' });
        assert.equal((await vm.api.describeInstance()).state, 'Running');
        const { socket } = await vm.connectVsock(52);
        socket.destroy();
        assert.deepEqual(contractProblems(spec, recs), []);
      } finally {
        await vm.kill();
      }
    });

    test('the backend-neutral restore (VmmDriver.restore) loads with the File backend and leaves the guest paused', async () => {
      assert.ok(snapshot.state && snapshot.mem && snapshot.vsock, 'the boot test produced a snapshot');
      const { d, record } = driver();
      const s = baseSpec(dir, assets, 'vm-1', { vsock: { guestCid: 3, udsPath: snapshot.vsockHost } });
      const vm = await d.restore(s, { stateFile: snapshot.state, memory: 'full', memoryFile: snapshot.mem, vsockPath: snapshot.vsock });
      try {
        const recs = await readRecords(record);
        assert.deepEqual(opsOf(recs), ['GET /version', 'PUT /snapshot/load']);
        assert.deepEqual(recs[1]!.body, { snapshot_path: snapshot.state, mem_backend: { backend_type: 'File', backend_path: snapshot.mem }, resume_vm: false });
        assert.equal((await vm.api.describeInstance()).state, 'Paused');
        await vm.resume();
        assert.equal((await vm.api.describeInstance()).state, 'Running');
        assert.deepEqual(contractProblems(spec, await readRecords(record)), []);
      } finally {
        await vm.kill();
      }
    });

    test(
      version === '1.13.1'
        ? 'restore of a snapshot that recorded another vsock path (taken without a path view) is refused before loading (vsock_override needs ≥ 1.16)'
        : 'restore of a snapshot that recorded another vsock path sends vsock_override',
      async () => {
        assert.ok(snapshot.state && snapshot.mem && snapshot.vsock, 'the boot test produced a snapshot');
        const { d, record } = driver();
        const s = baseSpec(dir, assets, 'clone-1', {
          vsock: { guestCid: 3 },
          restore: { snapshotPath: snapshot.state, memBackend: { type: 'File', path: snapshot.mem }, sourceVsockPath: snapshot.vsockHost, resume: false },
        });
        if (version === '1.13.1') {
          await assert.rejects(d.start(s), (e) => isKilnError(e) && e.code === 'KILN_ERR_VMM_FAILED' && /vsock_override/.test(e.message));
          const recs = await readRecords(record);
          assert.ok(!opsOf(recs).includes('PUT /snapshot/load'), 'nothing was loaded');
          assert.deepEqual(contractProblems(spec, recs), []);
          await assert.rejects(fs.stat(path.join(s.runtimeDir, 'firecracker.sock')), { code: 'ENOENT' }, 'cleanup removed the socket');
          return;
        }
        const vm = await d.start(s);
        try {
          const recs = await readRecords(record);
          const load = recs.find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
          assert.deepEqual(load.vsock_override, { uds_path: viewVsockPath('vsock.sock') });
          assert.ok(!opsOf(recs).includes('PATCH /vm'), 'resume: false leaves it paused');
          assert.equal((await vm.api.describeInstance()).state, 'Paused');
          await vm.resume();
          const { socket } = await vm.connectVsock(52);
          socket.destroy();
          assert.deepEqual(contractProblems(spec, await readRecords(record)), []);
        } finally {
          await vm.kill();
        }
      },
    );

    test('restore with the Uffd backend hands Firecracker the page-fault handler socket', async () => {
      assert.ok(snapshot.state, 'the boot test produced a snapshot');
      const uffdSock = path.join(dir, `uffd-${n}.sock`);
      let resolveHandshake!: (s: string) => void;
      const handshake = new Promise<string>((r) => (resolveHandshake = r));
      const handler = net.createServer((c) => {
        let got = '';
        c.on('data', (x) => (got += x));
        c.on('end', () => resolveHandshake(got));
      });
      await new Promise<void>((r) => handler.listen(uffdSock, r));
      const { d, record } = driver();
      let vm: FirecrackerInstance | undefined;
      try {
        // The snapshot holds a vsock device: the restored VM declares it (same path), so the
        // driver clears the socket the killed VM left behind, as Firecracker needs.
        vm = await d.start(
          baseSpec(dir, assets, 'uffd-1', {
            vsock: { guestCid: 3, udsPath: snapshot.vsockHost },
            restore: { snapshotPath: snapshot.state, memBackend: { type: 'Uffd', path: uffdSock }, sourceVsockPath: snapshot.vsock },
          }),
        );
        const regions = JSON.parse(await handshake) as { size: number }[];
        assert.equal(regions[0]!.size, 256 * 1024 * 1024);
        const recs = await readRecords(record);
        const load = recs.find((r) => r.path === '/snapshot/load')!.body as Record<string, any>;
        assert.deepEqual(load.mem_backend, { backend_type: 'Uffd', backend_path: uffdSock });
        assert.deepEqual(contractProblems(spec, recs), []);
      } finally {
        await vm?.kill();
        handler.close();
      }
    });

    test('negative: the validator rejects bodies Firecracker would refuse (so this suite can fail)', () => {
      const bad: [string, string, unknown, RegExp][] = [
        ['PUT', '/machine-config', { vcpu_count: '2', mem_size_mib: 256 }, /vcpu_count must be integer/],
        ['PUT', '/machine-config', { vcpu_count: 64, mem_size_mib: 256 }, /vcpu_count must be <= 32/],
        ['PUT', '/drives/root', { drive_id: 'root', path_on_host: '/x' }, /is_root_device/],
        ['PUT', '/drives/root', { drive_id: 'root', is_root_device: false, readonly: true }, /additional properties \(readonly\)/],
        ['PUT', '/vsock', { guest_cid: 2, uds_path: '/v.sock' }, /guest_cid must be >= 3/],
        ['PUT', '/actions', { action_type: 'Reboot' }, /allowed values/],
        ['PATCH', '/vm', { state: 'Running' }, /allowed values/],
        ['PUT', '/snapshot/create', { snapshot_path: '/s', mem_file_path: '/m', snapshot_type: 'Incremental' }, /allowed values/],
        ['PUT', '/mmds/config', { network_interfaces: ['eth0'], ipv4_address: '10.0.0.1' }, /must match format/],
        ['PUT', '/boot-source', undefined, /requires a body/],
        ['GET', '/version', {}, /takes no body/],
        ['PUT', '/drive/root', { drive_id: 'root', is_root_device: false }, /not an operation/],
      ];
      for (const [m, p, b, re] of bad) {
        const problems = spec.validateRequest(m, p, b);
        assert.ok(problems.some((x) => re.test(x)), `${m} ${p} ${JSON.stringify(b)}: expected ${re}, got ${JSON.stringify(problems)}`);
      }
      const vsockOverride = { snapshot_path: '/s', mem_backend: { backend_type: 'File', backend_path: '/m' }, vsock_override: { uds_path: '/v' } };
      const problems = spec.validateRequest('PUT', '/snapshot/load', vsockOverride);
      if (version === '1.13.1') assert.match(problems.join(), /additional properties \(vsock_override\)/);
      else assert.deepEqual(problems, []);
    });

    test('negative: a wrong body through the client is refused with a 400 and recorded as a violation', async () => {
      const sock = path.join(dir, `neg-${n++}.sock`);
      const standIn = new StandInFirecracker({ socketPath: sock, spec, version });
      await standIn.listen();
      try {
        const c = new FirecrackerApiClient(sock);
        await assert.rejects(
          c.call('PUT', '/machine-config', { vcpu_count: 2, mem_size_mib: 256, ht_enabled: true }),
          (e) => isKilnError(e) && e.details?.status === 400 && /ht_enabled/.test(e.message),
        );
        assert.equal(standIn.violations.length, 1);
        assert.ok(contractProblems(spec, standIn.requests).length > 0, 'the contract check sees it too');
      } finally {
        await standIn.close();
      }
    });
  });
}

// Sequencing and failure handling: Firecracker's pre-boot/post-boot rules, faults surfacing
// in KilnErrors, and VMMs that die, never come up, or are re-attached by a later kilnd.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError, type KilnError } from '../../errors.ts';
import { FirecrackerApiClient } from './api-client.ts';
import { FirecrackerDriver, type FirecrackerVmSpec } from './firecracker-driver.ts';
import { baseSpec, makeAssets, readRecords, tempDir, waitForText, writeFakeBinaries, type Assets, type FakeBinaries } from './testing/harness.ts';
import { specFile } from './testing/paths.ts';
import { loadSpec } from './testing/spec-validator.ts';
import { LOAD_NOT_ALLOWED, NOT_AFTER_BOOT, NOT_BEFORE_BOOT, StandInFirecracker } from './testing/stand-in.ts';
import { processGone } from './vmm-process.ts';

const VERSION = '1.13.1';
let dir: string;
let bins: FakeBinaries;
let assets: Assets;
let n = 0;

before(async () => {
  dir = await tempDir('seq');
  [bins, assets] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir)]);
});
after(() => fs.rm(dir, { recursive: true, force: true }));

const vmmError = (re: RegExp) => (e: unknown) => {
  assert.ok(isKilnError(e), `expected a KilnError, got ${String(e)}`);
  assert.equal(e.code, 'KILN_ERR_VMM_FAILED');
  assert.match(e.message, re);
  return true;
};

describe('Firecracker’s boot-phase rules (stand-in emulation)', () => {
  async function standIn() {
    const sock = path.join(dir, `rules-${n++}.sock`);
    const s = new StandInFirecracker({ socketPath: sock, spec: await loadSpec(specFile(VERSION)), version: VERSION });
    await s.listen();
    return { s, c: new FirecrackerApiClient(sock) };
  }

  test('pre-boot-only calls are refused after InstanceStart, with Firecracker’s fault_message', async () => {
    const { s, c } = await standIn();
    try {
      await c.putBootSource({ kernel_image_path: assets.kernel, boot_args: 'console=ttyS0' });
      await c.action('InstanceStart');
      const preBoot: [string, () => Promise<unknown>][] = [
        ['boot-source', () => c.putBootSource({ kernel_image_path: assets.kernel })],
        ['machine-config', () => c.putMachineConfig({ vcpu_count: 1, mem_size_mib: 128 })],
        ['drives', () => c.putDrive({ drive_id: 'late', is_root_device: false, is_read_only: true, path_on_host: assets.rootImage })],
        ['network-interfaces', () => c.putNetworkInterface({ iface_id: 'eth9', host_dev_name: 'tap9' })],
        ['vsock', () => c.putVsock({ guest_cid: 3, uds_path: path.join(dir, 'late.vsock') })],
        ['entropy', () => c.putEntropy({})],
        ['balloon', () => c.putBalloon({ amount_mib: 0, deflate_on_oom: false })],
        ['mmds/config', () => c.putMmdsConfig({ network_interfaces: ['eth0'] })],
        ['logger', () => c.putLogger({ level: 'Info' })],
        ['metrics', () => c.putMetrics({ metrics_path: assets.initrd })],
        ['snapshot/load', () => c.loadSnapshot({ snapshot_path: '/s', mem_backend: { backend_type: 'File', backend_path: '/m' } })],
        ['InstanceStart', () => c.action('InstanceStart')],
      ];
      for (const [what, call] of preBoot) {
        await assert.rejects(call(), (e: KilnError) => {
          assert.equal(e.code, 'KILN_ERR_VMM_FAILED', what);
          assert.equal(e.details?.status, 400, what);
          assert.equal(e.details?.fault_message, NOT_AFTER_BOOT, what);
          assert.ok(e.message.includes(NOT_AFTER_BOOT), what);
          return true;
        });
      }
      assert.deepEqual(s.violations, [], 'every refused request was still valid per the definition');
    } finally {
      await s.close();
    }
  });

  test('post-boot-only calls are refused before InstanceStart', async () => {
    const { s, c } = await standIn();
    try {
      for (const call of [
        () => c.patchVm('Paused'),
        () => c.createSnapshot({ snapshot_path: '/s', mem_file_path: '/m' }),
        () => c.patchDrive({ drive_id: 'root' }),
        () => c.action('SendCtrlAltDel'),
        () => c.action('FlushMetrics'),
        () => c.patchBalloon({ amount_mib: 1 }),
      ]) {
        await assert.rejects(call(), (e: KilnError) => e.details?.fault_message === NOT_BEFORE_BOOT);
      }
    } finally {
      await s.close();
    }
  });

  test('a snapshot loads only into a fresh VMM (logger and metrics allowed first)', async () => {
    const { s, c } = await standIn();
    try {
      await c.putLogger({ log_path: assets.initrd, level: 'Info' });
      await c.putMachineConfig({ vcpu_count: 1, mem_size_mib: 128 });
      await assert.rejects(
        c.loadSnapshot({ snapshot_path: '/s', mem_backend: { backend_type: 'File', backend_path: '/m' } }),
        (e: KilnError) => e.details?.fault_message === LOAD_NOT_ALLOWED,
      );
    } finally {
      await s.close();
    }
  });

  test('the driver reports a refused call and leaves nothing running', async () => {
    let pid: number | undefined;
    const driver = new FirecrackerDriver({
      binary: bins.firecracker,
      socketTimeoutMs: 20_000,
      env: { ...process.env, FAKE_FC_SPEC: specFile(VERSION), FAKE_FC_VERSION: VERSION },
      editSteps: (list) => {
        list.append({
          name: 'test.lateDrive',
          run: async (ctx) => {
            pid = ctx.pid;
            await ctx.client!.putDrive({ drive_id: 'late', is_root_device: false, is_read_only: true, path_on_host: assets.rootImage });
          },
        });
      },
    });
    const spec = baseSpec(dir, assets, 'late-1');
    await assert.rejects(driver.start(spec), (e: KilnError) => {
      assert.equal(e.code, 'KILN_ERR_VMM_FAILED');
      assert.match(e.message, /PUT \/drives\/late \(HTTP 400\)/);
      assert.ok(e.message.includes(NOT_AFTER_BOOT), e.message);
      return true;
    });
    assert.ok(pid, 'the VMM had started');
    assert.equal(await processGone(pid), true, 'the VMM was killed');
    await assert.rejects(fs.stat(path.join(spec.runtimeDir, 'firecracker.sock')), { code: 'ENOENT' });
    await assert.rejects(fs.stat(path.join(spec.runtimeDir, 'vmm.pid')), { code: 'ENOENT' });
  });
});

describe('VMM process failures', () => {
  function driver(env: Record<string, string>, extra: Partial<ConstructorParameters<typeof FirecrackerDriver>[0]> = {}) {
    const record = path.join(dir, `seq-${++n}.jsonl`);
    const pids: number[] = [];
    const d = new FirecrackerDriver({
      binary: bins.firecracker,
      socketTimeoutMs: 20_000,
      env: { ...process.env, FAKE_FC_VERSION: VERSION, FAKE_FC_RECORD: record, ...env },
      editSteps: (list) => {
        list.insertAfter('fc.spawn', { name: 'test.pid', run: async (ctx) => void pids.push(ctx.pid!) });
      },
      ...extra,
    });
    return { d, record, pids };
  }

  test('a VMM that exits mid-configuration: error names the step, exit code and its stderr', async () => {
    const { d, record, pids } = driver({ FAKE_FC_MODE: 'die-on', FAKE_FC_DIE_ON: 'PUT /drives' });
    const spec = baseSpec(dir, assets, 'die-1');
    await assert.rejects(d.start(spec), (e: KilnError) => {
      vmmError(/during fc\.drives/)(e);
      assert.match(e.message, /exited with code 1/);
      assert.match(e.message, /panicked at stand-in: dying on PUT \/drives\/root/);
      assert.equal(e.details?.step, 'fc.drives');
      assert.equal(e.details?.exit_code, 1);
      return true;
    });
    const ops = (await readRecords(record)).map((r) => r.path);
    assert.ok(ops.includes('/boot-source') && !ops.some((p) => p.startsWith('/drives')), `configuration stopped at the drives: ${ops}`);
    assert.equal(await processGone(pids[0]!), true);
    await assert.rejects(fs.stat(path.join(spec.runtimeDir, 'vmm.pid')), { code: 'ENOENT' });
  });

  test('a VMM that exits before its socket appears fails at once, with its stderr', async () => {
    const { d } = driver({ FAKE_FC_MODE: 'exit-early' });
    const t0 = Date.now();
    await assert.rejects(d.start(baseSpec(dir, assets, 'early-1')), (e: KilnError) => {
      vmmError(/during fc\.waitSocket/)(e);
      assert.match(e.message, /exited with code 3/);
      assert.match(e.message, /failed to open \/dev\/kvm/);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000, 'did not wait for the 20 s socket deadline');
  });

  test('a socket that never appears hits the deadline, and the VMM is killed', async () => {
    const { d, pids } = driver({ FAKE_FC_MODE: 'no-socket' }, { socketTimeoutMs: 1500 });
    const t0 = Date.now();
    await assert.rejects(d.start(baseSpec(dir, assets, 'nosock-1')), vmmError(/did not create its API socket .* within 1500 ms/));
    assert.ok(Date.now() - t0 < 10_000, 'bounded by the deadline');
    assert.equal(await processGone(pids[0]!), true, 'killed by the cleanup');
  });

  test('an abort signal stops the start and cleans up', async () => {
    const { d, pids } = driver({ FAKE_FC_MODE: 'no-socket' });
    const ac = new AbortController();
    const p = d.start(baseSpec(dir, assets, 'abort-1'), ac.signal);
    setTimeout(() => ac.abort(new Error('client went away')), 300);
    await assert.rejects(p, vmmError(/aborted/));
    assert.equal(await processGone(pids[0]!), true);
  });

  test('a missing firecracker binary is a host-setup error', async () => {
    const d = new FirecrackerDriver({ binary: path.join(dir, 'no-such-firecracker') });
    await assert.rejects(d.start(baseSpec(dir, assets, 'nobin-1')), (e: KilnError) => e.code === 'KILN_ERR_HOST_SETUP');
    await assert.rejects(d.version(), (e: KilnError) => e.code === 'KILN_ERR_HOST_SETUP');
  });

  test('version() reports `firecracker --version`', async () => {
    assert.equal(await new FirecrackerDriver({ binary: bins.firecracker, env: { ...process.env, FAKE_FC_VERSION: '1.16.1' } }).version(), 'Firecracker v1.16.1');
  });

  test('a second start for a VM whose VMM runs is refused; the running one is untouched', async () => {
    const { d } = driver({});
    const spec = baseSpec(dir, assets, 'twice-1');
    const vm = await d.start(spec);
    try {
      await assert.rejects(d.start(spec), (e: KilnError) => e.code === 'KILN_ERR_INVALID_STATE');
      assert.equal((await vm.api.describeInstance()).state, 'Running');
    } finally {
      await vm.kill();
    }
  });
});

describe('attach() to a VMM kilnd did not spawn', () => {
  function driver() {
    return new FirecrackerDriver({ binary: bins.firecracker, socketTimeoutMs: 20_000, env: { ...process.env, FAKE_FC_VERSION: VERSION } });
  }

  test('re-adopts the VMM after a detach; refuses other VMs, other processes and dead pids', async () => {
    const d = driver();
    const spec = baseSpec(dir, assets, 'att-1');
    const started = await d.start(spec);
    started.detach();
    const other: FirecrackerVmSpec = { ...spec, id: 'att-2', runtimeDir: path.join(dir, 'vms', 'att-2') };
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const vm = await d.attach(spec, started.pid);
      assert.ok(vm, 'attached');
      assert.equal(vm.pid, started.pid);
      assert.equal(vm.capabilities?.version.raw, VERSION);
      assert.equal((await vm.api.describeInstance()).state, 'Running');
      assert.equal(await d.attach(other, started.pid), null, 'another VM’s spec');
      assert.equal(await d.attach(spec, sleeper.pid!), null, 'a live process that is not this VMM (pid reuse)');
      assert.equal(await d.attach(spec, process.pid), null);
      assert.equal(await d.attach(spec, 2 ** 22 + 12345), null, 'no such pid');

      // A VMM that dies is noticed within a second, without being its parent.
      const t0 = Date.now();
      process.kill(vm.pid, 'SIGKILL');
      const exit = await vm.exited;
      const ms = Date.now() - t0;
      assert.equal(exit.clean, false);
      assert.ok(ms < 1500, `death noticed after ${ms} ms`);
      assert.equal(await d.attach(spec, started.pid), null, 'gone');
    } finally {
      sleeper.kill();
      await started.kill();
    }
  });

  test('a guest that powers off is a clean exit, read from kiln-init’s marker (the logger runs at Warning)', async () => {
    const d = driver();
    const spec = baseSpec(dir, assets, 'att-3');
    const started = await d.start(spec);
    started.detach();
    const vm = await d.attach(spec, started.pid);
    assert.ok(vm, 'attached');
    try {
      await vm.writeConsole('echo still-here\n');
      await waitForText(vm.consoleLogPath, 'still-here');
      await vm.writeConsole('poweroff\n');
      assert.deepEqual(await vm.exited, { reason: 'guest powered off (kiln-init)', clean: true });
      await assert.rejects(vm.writeConsole('echo nobody\n'), (e: KilnError) => e.code === 'KILN_ERR_INVALID_STATE');
    } finally {
      await vm.kill();
    }
  });
});

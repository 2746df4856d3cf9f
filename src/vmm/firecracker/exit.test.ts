// How a Firecracker VM's end is judged, and where Firecracker's own output goes. Firecracker
// exits 0 on every guest reset (kiln-init's shutdown, a kernel panic with panic=1 alike) and
// logs that exit at Info, below kiln's Warning: only kiln-init's @kiln:poweroff marker tells a
// clean power-off. Until a logger exists Firecracker logs to stdout, the guest's console log.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { SERIAL_RATE_LIMIT } from './boot-steps.ts';
import { FirecrackerDriver } from './firecracker-driver.ts';
import { guestPoweredOff } from './instance.ts';
import { baseSpec, makeAssets, readRecords, tempDir, waitForText, writeFakeBinaries, type Assets, type FakeBinaries } from './testing/harness.ts';
import { specFile } from './testing/paths.ts';
import { readCmdline } from './vmm-process.ts';

let dir: string;
let bins: FakeBinaries;
let assets: Assets;
before(async () => {
  dir = await tempDir('exit');
  [bins, assets] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir)]);
});
after(() => fs.rm(dir, { recursive: true, force: true }));

const driver = () => new FirecrackerDriver({ binary: bins.firecracker, socketTimeoutMs: 20_000, env: { ...process.env } });

test('the marker decides: kiln-init’s poweroff after its boot marker, at the start of a line', async () => {
  const f = `${dir}/console-a.log`;
  await fs.writeFile(f, 'old boot\n@kiln:poweroff\n@kiln:boot uptime_ms=5\nworkload says  @kiln:poweroff\n @kiln:poweroff\n');
  assert.equal(await guestPoweredOff(f), false, 'an escaped or mid-line marker is the workload’s');
  await fs.appendFile(f, '@kiln:poweroff\r\n[ 1.0] reboot: Restarting system\n');
  assert.equal(await guestPoweredOff(f), true);
  const before = (await fs.stat(f)).size;
  await fs.appendFile(f, 'Kernel panic - not syncing\n');
  assert.equal(await guestPoweredOff(f, before), false, 'only output since this VMM started counts');
});

describe('exits of a running VM', () => {
  test('a kernel panic resets the guest and Firecracker exits 0: not a clean power-off', async () => {
    const vm = await driver().start(baseSpec(dir, assets, 'panic-1'));
    try {
      await vm.writeConsole('panic\n');
      const exit = await vm.exited;
      assert.equal(exit.clean, false, exit.reason);
      assert.match(exit.reason, /without kiln-init powering it off/);
    } finally {
      await vm.kill();
    }
  });

  test('a power-off after an earlier boot’s marker: only this VMM’s output counts', async () => {
    const spec = baseSpec(dir, assets, 'panic-2');
    const first = await driver().start(spec);
    await first.writeConsole('poweroff\n');
    assert.equal((await first.exited).clean, true);
    const second = await driver().start(spec);
    try {
      await second.writeConsole('panic\n');
      assert.equal((await second.exited).clean, false, 'the first boot’s marker does not make the second clean');
    } finally {
      await second.kill();
    }
  });

  test('re-attached (a kilnd restart) with the logger at Warning: a panic is a crash, a power-off is clean', async () => {
    const d = driver();
    for (const [cmd, clean] of [['panic', false], ['poweroff', true]] as const) {
      const spec = baseSpec(dir, assets, `att-${cmd}`);
      const started = await d.start(spec);
      started.detach();
      const vm = await d.attach(spec, started.pid);
      assert.ok(vm, 'attached');
      try {
        await vm.writeConsole(`${cmd}\n`);
        const exit = await vm.exited;
        assert.equal(exit.clean, clean, `${cmd}: ${exit.reason}`);
      } finally {
        await vm.kill();
        await started.kill();
      }
    }
  });
});

describe('Firecracker’s own log and metrics', () => {
  test('are set on its command line, so none of its log lines reach the guest’s console log', async () => {
    const spec = baseSpec(dir, assets, 'log-1', { logLevel: 'Info' });
    const vm = await driver().start(spec);
    try {
      const argv = (await readCmdline(vm.pid))!;
      const at = (f: string) => argv[argv.indexOf(f) + 1];
      assert.equal(at('--log-path'), vm.logPath);
      assert.equal(at('--level'), 'Info');
      assert.ok(argv.includes('--metrics-path'), argv.join(' '));
      await waitForText(vm.consoleLogPath, 'Linux version');
      await waitForText(vm.logPath, 'Running Firecracker');
      const console = await fs.readFile(vm.consoleLogPath, 'utf8');
      assert.doesNotMatch(console, /Running Firecracker|:main:INFO\]/, 'the console log holds only the guest’s output');
    } finally {
      await vm.kill();
    }
  });
});

describe('what a guest can make grow', () => {
  test('metrics go to a pipe kilnd drains: nothing accumulates on disk, the latest line is kept', async () => {
    const vm = await driver().start(baseSpec(dir, assets, 'metrics-1'));
    try {
      const file = (await readCmdline(vm.pid))!;
      const metricsPath = file[file.indexOf('--metrics-path') + 1]!;
      for (let i = 0; i < 300; i++) await vm.flushMetrics();
      const st = await fs.lstat(metricsPath);
      assert.ok(st.isFIFO(), 'a named pipe, not a file');
      assert.equal(st.size, 0);
      const deadline = Date.now() + 5000;
      while (!vm.lastMetrics() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(vm.lastMetrics()?.utc_timestamp_ms, 'the latest metrics line was read');
    } finally {
      await vm.kill();
    }
  });

  test('on 1.16 the serial console is rate-limited (PUT /serial), on 1.13 it cannot be', async () => {
    for (const version of ['1.13.1', '1.16.1']) {
      const record = `${dir}/serial-${version}.jsonl`;
      const d = new FirecrackerDriver({ binary: bins.firecracker, socketTimeoutMs: 20_000, env: { ...process.env, FAKE_FC_VERSION: version, FAKE_FC_SPEC: specFile(version), FAKE_FC_RECORD: record } });
      const vm = await d.start(baseSpec(dir, assets, `serial-${version.replace(/\./g, '')}`));
      try {
        const recs = await readRecords(record);
        const serial = recs.find((r) => r.path === '/serial');
        if (version === '1.13.1') assert.equal(serial, undefined);
        else {
          assert.deepEqual(serial?.body, { rate_limiter: SERIAL_RATE_LIMIT });
          assert.equal(serial?.status, 204);
          const ops = recs.map((r) => r.path);
          assert.ok(ops.indexOf('/serial') < ops.indexOf('/actions'), 'configured before InstanceStart');
        }
      } finally {
        await vm.kill();
      }
    }
  });
});

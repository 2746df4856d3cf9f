// The KVM probe on a host with Firecracker and no QEMU: Firecracker itself boots the probe
// guest (through the stand-in here, which takes --no-api --config-file as Firecracker does).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { decideAccelerator, probeBootFirecracker } from './accel-probe.ts';
import { makeAssets, tempDir, writeFakeBinaries, type Assets, type FakeBinaries } from './firecracker/testing/harness.ts';
import { specFile } from './firecracker/testing/paths.ts';

let dir: string;
let bins: FakeBinaries;
let assets: Assets;
before(async () => {
  dir = await tempDir('probe');
  [bins, assets] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir)]);
});
after(() => fs.rm(dir, { recursive: true, force: true }));

test('Firecracker boots the probe guest from a config file and kiln-init’s marker is the proof', async () => {
  process.env.FAKE_FC_SPEC = specFile('1.13.1');
  try {
    const ok = await probeBootFirecracker({ binary: bins.firecracker, kernel: assets.kernel, initrd: assets.initrd, workDir: path.join(dir, 'vmlinux') });
    assert.equal(ok, null);
    process.env.FAKE_FC_GUEST = 'hang';
    const hung = await probeBootFirecracker({ binary: bins.firecracker, kernel: assets.kernel, initrd: assets.initrd, workDir: path.join(dir, 'vmlinux'), timeoutMs: 1500 });
    assert.match(hung ?? '', /Firecracker KVM probe guest did not reach kiln-init \(.*timed out/);
  } finally {
    delete process.env.FAKE_FC_GUEST;
    delete process.env.FAKE_FC_SPEC;
  }
});

test('no QEMU: the probe runs with Firecracker and the reason says QEMU is missing', async () => {
  const probed: string[] = [];
  const find = async (n: string) => (n === 'firecracker' ? bins.firecracker : null);
  const d = await decideAccelerator({
    requested: 'auto',
    kernel: assets.kernel,
    initrd: assets.initrd,
    cacheDir: path.join(dir, 'cache-1'),
    canProbe: false,
    find,
    kvmCheck: async () => null,
    probeFirecracker: async (o) => {
      probed.push(o.binary);
      return null;
    },
  });
  assert.deepEqual(probed, [bins.firecracker]);
  assert.equal(d.accelerator, 'kvm');
  assert.match(d.reason, /KVM probe boot reached kiln-init \(QEMU missing: probed with .*firecracker\)/);
  const failed = await decideAccelerator({
    requested: 'auto', kernel: assets.kernel, initrd: assets.initrd, cacheDir: path.join(dir, 'cache-2'), find, kvmCheck: async () => null,
    probeFirecracker: async () => 'the Firecracker KVM probe guest did not reach kiln-init (timed out)',
  });
  assert.equal(failed.accelerator, 'tcg');
  assert.match(failed.reason, /QEMU missing/);
  const nothing = await decideAccelerator({ requested: 'auto', kernel: assets.kernel, initrd: assets.initrd, cacheDir: path.join(dir, 'cache-3'), find: async () => null, kvmCheck: async () => null });
  assert.match(nothing.reason, /QEMU missing: no .*, and no firecracker to probe with/);
});

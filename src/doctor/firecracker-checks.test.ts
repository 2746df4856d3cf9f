import assert from 'node:assert/strict';
import { test } from 'node:test';
import { evaluate, type HostFacts } from './checks.ts';
import { firecrackerSetupChecks, gatherFirecrackerSetup, type FirecrackerSetupFacts } from './firecracker-checks.ts';

const setup = (over: Partial<FirecrackerSetupFacts> = {}): FirecrackerSetupFacts => ({
  root: true,
  tools: { unshare: '/usr/bin/unshare', nsenter: '/usr/bin/nsenter', mkfifo: '/usr/bin/mkfifo', mount: '/usr/bin/mount' },
  mountNamespace: 'ok',
  devNetTun: true,
  jailer: { mode: 'auto', uid: '65534', gid: '65534' },
  ...over,
});
const fc = { path: '/usr/local/bin/firecracker', version: 'Firecracker v1.13.1' };
const jailer = { path: '/usr/local/bin/jailer', version: 'Jailer v1.13.1' };
const byName = (checks: ReturnType<typeof firecrackerSetupChecks>) => Object.fromEntries(checks.map((c) => [c.name, c]));

test('a set-up host: every Firecracker prerequisite ok, the jailer on as 65534', () => {
  const c = byName(firecrackerSetupChecks(setup(), fc, jailer));
  for (const n of ['root', 'util-linux tools', 'path view', '/dev/net/tun', 'jail', 'classic VMs']) assert.equal(c[n]?.status, 'ok', n);
  assert.match(c.jail!.detail, /65534:65534, chrooted/);
});

test('each missing prerequisite fails or warns with its fix, and blocks the Firecracker backend when it fails', () => {
  const c = byName(firecrackerSetupChecks(setup({ root: false, mountNamespace: 'unshare: unshare failed: Operation not permitted', devNetTun: false, tools: { unshare: '/usr/bin/unshare', nsenter: null, mkfifo: '/usr/bin/mkfifo', mount: '/usr/bin/mount' } }), fc, jailer));
  assert.equal(c.root!.status, 'fail');
  assert.equal(c['path view']!.status, 'fail');
  assert.match(c['path view']!.detail, /Operation not permitted/);
  assert.equal(c['/dev/net/tun']!.fix, 'modprobe tun');
  assert.match(c['util-linux tools']!.detail, /nsenter/);
  assert.equal(byName(firecrackerSetupChecks(setup(), fc, null)).jail!.status, 'warn', 'no jailer: runs unjailed');
  assert.equal(byName(firecrackerSetupChecks(setup({ jailer: { mode: 'on', uid: '65534', gid: '65534' } }), fc, null)).jail!.status, 'fail');
  assert.equal(byName(firecrackerSetupChecks(setup({ jailer: { mode: 'off', uid: '65534', gid: '65534' } }), fc, jailer)).jail!.status, 'warn');
  assert.equal(byName(firecrackerSetupChecks(setup({ jailer: { mode: 'auto', uid: '0', gid: '0' } }), fc, jailer)).jail!.status, 'fail');
  assert.equal(byName(firecrackerSetupChecks(setup(), fc, { ...jailer, version: 'Jailer v1.16.1' }))['jailer version']!.status, 'warn');

  const facts = {
    binaries: { qemu: null, firecracker: fc, jailer, ip: fc, nft: fc, mksquashfs: fc, 'mkfs.erofs': fc, 'mkfs.ext4': fc },
    firecrackerName: 'firecracker',
    kvm: { present: true, openError: null },
    kvmProbe: { failure: null },
    cgroup: { v2: true, mount: '/sys/fs/cgroup', controllers: ['cpu', 'memory'] },
    vhostVsock: true,
    kernel: { path: '/k', source: 'debian', format: 'bzImage' },
    assetsDir: '/a',
    firecrackerSetup: setup({ mountNamespace: 'denied' }),
  } satisfies HostFacts;
  const r = evaluate(facts);
  assert.equal(r.backends.firecracker.usable, false);
  assert.match(r.backends.firecracker.summary, /path view/);
});

test('gathered on this host (root, util-linux): the mount namespace really works', async () => {
  const s = await gatherFirecrackerSetup();
  assert.equal(s.root, true);
  assert.equal(s.mountNamespace, 'ok');
  assert.ok(s.tools.unshare && s.tools.mkfifo);
});

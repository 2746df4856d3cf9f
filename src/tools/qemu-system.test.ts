import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { QEMU_BINARY, qemuArgv } from './qemu-system.ts';

test('QEMU joins its cgroups from a root shell that then execs it (same pid), inside the netns when asked', () => {
  assert.deepEqual(qemuArgv(['-S'], {}), [QEMU_BINARY, '-S']);
  const argv = qemuArgv(['-S'], { netns: 'ns1', joinCgroup: ['/cg/a/cgroup.procs', '/cg/b/cgroup.procs'] });
  assert.deepEqual(argv.slice(0, 2), ['/bin/sh', '-c']);
  assert.deepEqual(argv.slice(3), ['kiln-vmm-join', '/cg/a/cgroup.procs', '/cg/b/cgroup.procs', 'nsenter', '--net=/run/netns/ns1', '--', QEMU_BINARY, '-S']);

  // The script for real, with files standing in for cgroup.procs and a command for QEMU.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-join-'));
  try {
    const files = [path.join(dir, 'a'), path.join(dir, 'b')];
    const script = qemuArgv([], { joinCgroup: files })[2]!;
    const r = spawnSync('/bin/sh', ['-c', script, 'kiln-vmm-join', ...files, '/bin/sh', '-c', 'echo $$'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const pid = r.stdout.trim();
    assert.ok(/^\d+$/.test(pid));
    for (const f of files) assert.equal(fs.readFileSync(f, 'utf8').trim(), pid, 'the pid written is the exec’d program’s');
    // A join that fails stops before exec.
    const bad = spawnSync('/bin/sh', ['-c', script, 'kiln-vmm-join', path.join(dir, 'missing/x'), files[1]!, '/bin/echo', 'ran'], { encoding: 'utf8' });
    assert.notEqual(bad.status, 0);
    assert.doesNotMatch(bad.stdout, /ran/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

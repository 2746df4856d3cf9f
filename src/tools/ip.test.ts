import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseNeighbourLine } from './ip.ts';

test('parseNeighbourLine reads `ip monitor neigh` lines and skips deletions', () => {
  assert.deepEqual(parseNeighbourLine('10.251.7.9 lladdr 02:6b:0a:fb:07:09 REACHABLE '), { ip: '10.251.7.9', mac: '02:6b:0a:fb:07:09', state: 'REACHABLE' });
  assert.deepEqual(parseNeighbourLine('10.0.0.2 dev kilnbr0 lladdr 02:6b:0a:00:00:02 router STALE'), { ip: '10.0.0.2', mac: '02:6b:0a:00:00:02', state: 'STALE' });
  assert.deepEqual(parseNeighbourLine('10.251.7.9 FAILED'), { ip: '10.251.7.9', mac: null, state: 'FAILED' });
  assert.equal(parseNeighbourLine('Deleted 10.251.7.9 FAILED'), null);
  assert.equal(parseNeighbourLine('garbage'), null);
});

test('a tap made for an unprivileged VMM is owned by its uid and gid (real iproute2)', async () => {
  const { ipBatch, tuntapAddCommand, deleteLink } = await import('./ip.ts');
  const { run } = await import('../util/process.ts');
  assert.deepEqual(tuntapAddCommand('t0'), ['tuntap', 'add', 'dev', 't0', 'mode', 'tap']);
  const tap = `kfcown${process.pid % 100000}`;
  await ipBatch([tuntapAddCommand(tap, { uid: 65534, gid: 65534 })]);
  try {
    const { stdout } = await run('ip', ['-d', '-j', 'link', 'show', 'dev', tap]);
    const info = (JSON.parse(stdout) as { linkinfo: { info_data: { user?: string; group?: string } } }[])[0]!.linkinfo.info_data;
    const { stdout: names } = await run('getent', ['passwd', '65534']);
    assert.equal(info.user, names.split(':')[0]);
    assert.ok(info.group, 'a group owner is set');
  } finally {
    await deleteLink(tap);
  }
});

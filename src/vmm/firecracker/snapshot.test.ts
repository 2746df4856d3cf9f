import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JAIL } from './jailer.ts';
import { isKilnError } from '../../errors.ts';
import { createSnapshot, loadSnapshotBody, type RestoreSpec } from './snapshot.ts';
import { FirecrackerApiClient } from './api-client.ts';
import { capabilitiesOf, parseFirecrackerVersion } from './version.ts';

const caps = (v: string) => capabilitiesOf(parseFirecrackerVersion(v)!);
const id = (p: string) => p;
const r: RestoreSpec = { snapshotPath: '/snap/state', memBackend: { type: 'File', path: '/snap/mem' } };

test('the load body: mem_backend (never the deprecated mem_file_path), resume left to fc.resume', () => {
  assert.deepEqual(loadSnapshotBody(r, { caps: caps('1.13.1'), vmmPath: id, jailed: false }), {
    snapshot_path: '/snap/state',
    mem_backend: { backend_type: 'File', backend_path: '/snap/mem' },
    resume_vm: false,
  });
});

test('network_overrides go to 1.13; vsock_override and clock_realtime only to ≥ 1.16', () => {
  const full: RestoreSpec = { ...r, networkOverrides: [{ ifaceId: 'eth-0', hostDevName: 'tap7' }], clockRealtime: true, sourceVsockPath: '/old/v.sock' };
  const b16 = loadSnapshotBody(full, { caps: caps('1.16.1'), vmmPath: id, vsockPath: '/new/v.sock', jailed: false });
  assert.deepEqual(b16.network_overrides, [{ iface_id: 'eth_0', host_dev_name: 'tap7' }]);
  assert.deepEqual(b16.vsock_override, { uds_path: '/new/v.sock' });
  assert.equal(b16.clock_realtime, true);
  const refused = (re: RegExp) => (e: unknown) => isKilnError(e) && e.code === 'KILN_ERR_VMM_FAILED' && re.test(e.message);
  assert.throws(() => loadSnapshotBody(full, { caps: caps('1.13.1'), vmmPath: id, vsockPath: '/new/v.sock', jailed: false }), refused(/vsock_override/));
  assert.throws(() => loadSnapshotBody({ ...r, clockRealtime: true }, { caps: caps('1.15.0'), vmmPath: id, jailed: false }), refused(/clock_realtime/));
  const b13 = loadSnapshotBody({ ...r, networkOverrides: full.networkOverrides }, { caps: caps('1.13.1'), vmmPath: id, jailed: false });
  assert.deepEqual(b13.network_overrides, [{ iface_id: 'eth_0', host_dev_name: 'tap7' }]);
});

test('no vsock_override when the socket stays where the snapshot had it (jails: by construction)', () => {
  const same = loadSnapshotBody({ ...r, sourceVsockPath: '/v.sock' }, { caps: caps('1.13.1'), vmmPath: id, vsockPath: '/v.sock', jailed: false });
  assert.equal(same.vsock_override, undefined);
  const jailed = loadSnapshotBody(r, { caps: caps('1.13.1'), vmmPath: () => JAIL.vsock, vsockPath: '/state/vms/vm-1/vsock/vsock.sock', jailed: true });
  assert.equal(jailed.vsock_override, undefined);
});

test('createSnapshot pauses, snapshots, and resumes only when asked', async () => {
  const calls: string[] = [];
  const client = new FirecrackerApiClient('/x', {
    transport: async (_s, req) => {
      calls.push(`${req.method} ${req.path} ${JSON.stringify(req.body)}`);
      return { status: 204, body: '' };
    },
  });
  await createSnapshot(client, { snapshotPath: '/a', memFilePath: '/b', type: 'Diff' }, id);
  await createSnapshot(client, { snapshotPath: '/a', memFilePath: '/b', resume: true }, id);
  assert.deepEqual(calls, [
    'PATCH /vm {"state":"Paused"}',
    'PUT /snapshot/create {"snapshot_type":"Diff","snapshot_path":"/a","mem_file_path":"/b"}',
    'PATCH /vm {"state":"Paused"}',
    'PUT /snapshot/create {"snapshot_type":"Full","snapshot_path":"/a","mem_file_path":"/b"}',
    'PATCH /vm {"state":"Resumed"}',
  ]);
});

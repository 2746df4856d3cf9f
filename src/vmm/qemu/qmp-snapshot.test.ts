import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { MIGRATE_MAX_BANDWIDTH, loadVmState, saveVmState, type QmpExecutor } from './qmp-snapshot.ts';

/** A scripted QMP: records commands, answers query-status/query-migrate from queues. */
function scripted(o: { status?: string; migrate?: string[]; failOn?: string }) {
  const calls: [string, Record<string, unknown> | undefined][] = [];
  const migrate = [...(o.migrate ?? ['active', 'completed'])];
  const qmp: QmpExecutor = {
    async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
      calls.push([command, args]);
      if (command === o.failOn) throw new Error(`${command} refused`);
      if (command === 'query-status') return { status: o.status ?? 'running' } as T;
      if (command === 'query-migrate') {
        const status = migrate.length > 1 ? migrate.shift()! : migrate[0]!;
        return (status === 'failed' ? { status, 'error-desc': 'disk full' } : { status }) as T;
      }
      return {} as T;
    },
  };
  return { qmp, calls, names: () => calls.map((c) => c[0]) };
}

const noSleep = async () => {};

test('save: stop, capabilities, unthrottled migrate to the stream, wait, cont when resuming', async () => {
  const s = scripted({ migrate: ['setup', 'active', 'completed'] });
  await saveVmState(s.qmp, { uri: 'unix:/migrate.sock', ignoreShared: false, resume: true, sleep: noSleep });
  assert.deepEqual(s.names(), [
    'query-status', 'stop', 'migrate-set-capabilities', 'migrate-set-parameters', 'migrate',
    'query-migrate', 'query-migrate', 'query-migrate', 'cont',
  ]);
  assert.deepEqual(s.calls[2]![1], { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
  assert.deepEqual(s.calls[3]![1], { 'max-bandwidth': MIGRATE_MAX_BANDWIDTH });
  assert.deepEqual(s.calls[4]![1], { uri: 'unix:/migrate.sock' });
});

test('save without resume leaves the guest paused; a paused guest is not stopped again nor continued', async () => {
  const a = scripted({});
  await saveVmState(a.qmp, { uri: 'unix:/x', ignoreShared: true, resume: false, sleep: noSleep });
  assert.ok(!a.names().includes('cont'));
  assert.deepEqual(a.calls[2]![1], { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  const b = scripted({ status: 'paused' });
  await saveVmState(b.qmp, { uri: 'unix:/x', ignoreShared: false, resume: true, sleep: noSleep });
  assert.ok(!b.names().includes('stop') && !b.names().includes('cont'), b.names().join(' '));
});

test('a failed migration is a KILN_ERR_SNAPSHOT_FAILED with QEMU’s reason, and the guest still resumes', async () => {
  const s = scripted({ migrate: ['active', 'failed'] });
  await assert.rejects(
    saveVmState(s.qmp, { uri: 'unix:/x', ignoreShared: false, resume: true, sleep: noSleep }),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_SNAPSHOT_FAILED' && /disk full/.test(e.message),
  );
  assert.equal(s.names().at(-1), 'cont');
});

test('load: capabilities before migrate-incoming from the stream, then wait; no cont (the caller resumes)', async () => {
  const s = scripted({});
  await loadVmState(s.qmp, { uri: 'fd:3', ignoreShared: true, sleep: noSleep });
  assert.deepEqual(s.names(), ['migrate-set-capabilities', 'migrate-incoming', 'query-migrate', 'query-migrate']);
  assert.deepEqual(s.calls[1]![1], { uri: 'fd:3' });
});

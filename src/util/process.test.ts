import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ProcessError, pidAlive, run } from './process.ts';

test('a failing tool raises with its stderr tail, exit code and argv', async () => {
  await assert.rejects(run('sh', ['-c', 'echo out; echo "it broke" >&2; exit 3']), (e: ProcessError) => {
    assert.equal(e.code, 'KILN_ERR_TOOL_FAILED');
    assert.equal(e.exitCode, 3);
    assert.match(e.message, /sh exited with code 3: it broke/);
    assert.deepEqual(e.argv, ['-c', 'echo out; echo "it broke" >&2; exit 3']);
    return true;
  });
});

test('a missing tool says so; a hung tool is killed at its timeout', async () => {
  await assert.rejects(run('kiln-no-such-tool', []), /not installed/);
  await assert.rejects(run('sleep', ['10'], { timeoutMs: 100 }), /timed out after 100 ms/);
});

test('stdout and stdin round-trip; pidAlive knows this process', async () => {
  assert.equal((await run('cat', [], { input: 'hello' })).stdout, 'hello');
  assert.equal(pidAlive(process.pid), true);
  assert.equal(pidAlive(2 ** 22 + 12345), false);
});

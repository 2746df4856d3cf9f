import assert from 'node:assert/strict';
import { test } from 'node:test';
import { basicUser } from './envd/caller.ts';
import { sandboxTarget } from './server.ts';
import { newSandboxId } from './sandbox-service.ts';

test('routing: host names <port>-<id>.<domain> first, then E2B\'s headers, else the control plane', () => {
  assert.deepEqual(sandboxTarget({ host: '49983-iabc123.kiln.example:443' }), { id: 'iabc123', port: 49983 });
  assert.deepEqual(sandboxTarget({ host: '3000-iabc123.kiln.example' }), { id: 'iabc123', port: 3000 });
  assert.deepEqual(sandboxTarget({ host: '127.0.0.1:8080', 'e2b-sandbox-id': 'iabc', 'e2b-sandbox-port': '49983' }), { id: 'iabc', port: 49983 });
  assert.equal(sandboxTarget({ host: '127.0.0.1:8080' }), null);
  assert.equal(sandboxTarget({ host: 'api.kiln.example' }), null);
  assert.equal(sandboxTarget({ host: '127.0.0.1', 'e2b-sandbox-id': 'iabc', 'e2b-sandbox-port': '99999' }), null);
});

test('sandbox ids are 20 lower-case alphanumerics (parseable out of a host name)', () => {
  const ids = new Set(Array.from({ length: 200 }, newSandboxId));
  assert.equal(ids.size, 200);
  for (const id of ids) assert.match(id, /^[a-z0-9]{20}$/);
});

test('envd\'s Basic header names the user', () => {
  assert.equal(basicUser(`Basic ${Buffer.from('root:').toString('base64')}`), 'root');
  assert.equal(basicUser(`Basic ${Buffer.from('user:').toString('base64')}`), 'user');
  assert.equal(basicUser('Bearer x'), null);
  assert.equal(basicUser(undefined), null);
  assert.equal(basicUser(`Basic ${Buffer.from(':').toString('base64')}`), null);
});

test('PTY commands run under script with their words quoted', async () => {
  const { ptyArgv, shellQuote } = await import('./envd/process-service.ts');
  assert.equal(shellQuote("it's"), `'it'\\''s'`);
  const argv = ptyArgv(['/bin/bash', '-c', "echo 'x y'"], { cols: 100, rows: 30 });
  assert.deepEqual(argv.slice(0, 5), ['script', '-q', '-f', '-e', '-c']);
  assert.equal(argv[5], `stty rows 30 cols 100 2>/dev/null; exec '/bin/bash' '-c' 'echo '\\''x y'\\'''`);
  assert.equal(argv[6], '/dev/null');
});

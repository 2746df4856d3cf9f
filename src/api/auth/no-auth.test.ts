import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultConfig } from '../../config.ts';
import { Daemon } from '../../daemon.ts';

test('--no-auth on a non-loopback address is refused before anything is touched', async () => {
  const config = { ...defaultConfig({}), stateDir: '/nonexistent/kiln-no-auth', listenHost: '0.0.0.0', auth: 'none' as const };
  await assert.rejects(Daemon.start(config), { code: 'KILN_ERR_HOST_SETUP', message: /--no-auth/ });
});

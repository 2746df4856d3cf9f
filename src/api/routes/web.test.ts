import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { defaultConfig } from '../../config.ts';
import type { Daemon } from '../../daemon.ts';
import { buildServer } from '../server.ts';

// The static routes touch no daemon state; the API routes are not called here.
const daemon = { config: { ...defaultConfig({}), apiToken: 'sekrit' }, version: 'test' } as unknown as Daemon;

test('dashboard: page and assets are served without the token, the API still needs it', async () => {
  const app = await buildServer(daemon, pino({ level: 'silent' }));
  try {
    const page = await app.inject('/');
    assert.equal(page.statusCode, 200);
    assert.match(page.headers['content-type'] as string, /text\/html/);
    assert.match(page.headers['server-timing'] as string, /^app;dur=\d+\.\d{3}$/, 'kilnd says how long it took (the API role adds its entries after it)');
    assert.match(page.body, /<script type="module" src="\/ui\/app.js">/);
    const js = await app.inject('/ui/app.js');
    assert.equal(js.statusCode, 200);
    assert.match(js.headers['content-type'] as string, /javascript/);
    // Its modules and the libraries from node_modules, all without the token.
    const client = await app.inject('/ui/lib/api.js');
    assert.equal(client.statusCode, 200);
    assert.match(client.body, /\/v1\/events/);
    // The token is kept for the tab's session only, never in localStorage (on disk).
    assert.match(client.body, /globalThis\.sessionStorage/);
    for (const f of ['app.js', 'lib/api.js', 'pages/machines.js']) assert.doesNotMatch((await app.inject(`/ui/${f}`)).body, /localStorage/);
    for (const [f, re] of [['xterm.mjs', /export\s*\{[^}]*as Terminal/], ['addon-fit.mjs', /as FitAddon/], ['uplot.mjs', /export \{ uPlot as default \}/], ['xterm.css', /\.xterm/]] as const) {
      const r = await app.inject(`/ui/vendor/${f}`);
      assert.equal(r.statusCode, 200, f);
      assert.match(r.body, re, f);
    }
    assert.equal((await app.inject('/ui/style.css')).statusCode, 200);
    // Unit tests beside the modules are not served (they need the token, like any unknown path).
    assert.equal((await app.inject('/ui/views/views.test.ts')).statusCode, 401);
    // Only the listed files: no path walking into src/.
    assert.equal((await app.inject('/ui/../../daemon.ts')).statusCode, 401);
    assert.equal((await app.inject('/ui/%2e%2e/daemon.ts')).statusCode, 401);
    const api = await app.inject('/v1/vms');
    assert.equal(api.statusCode, 401);
    assert.equal(api.json().code, 'KILN_ERR_UNAUTHORIZED');
  } finally {
    await app.close();
  }
});

// Writes docs/openapi.json from the route schemas (the same document kilnd serves at
// /openapi.json). `npm run openapi`; a unit test fails when the committed file is stale.
import fs from 'node:fs/promises';
import { pino } from 'pino';
import { buildServer } from '../src/api/server.ts';
import type { Daemon } from '../src/daemon.ts';
import { defaultConfig } from '../src/config.ts';
import { KILN_VERSION } from '../src/version.ts';

export async function openapiDocument(): Promise<unknown> {
  // Route registration reads only config and version; handlers never run here.
  const daemon = { config: { ...defaultConfig({}), apiToken: 'unused' }, version: KILN_VERSION } as unknown as Daemon;
  const app = await buildServer(daemon, pino({ level: 'silent' }));
  await app.ready();
  const doc = app.swagger();
  await app.close();
  return doc;
}

export const OPENAPI_FILE = new URL('../docs/openapi.json', import.meta.url);

if (import.meta.url === `file://${process.argv[1]}`) {
  await fs.writeFile(OPENAPI_FILE, JSON.stringify(await openapiDocument(), null, 2) + '\n');
  console.log('wrote docs/openapi.json');
}

// kiln's HTTP API over a daemon with no state, in a process of its own; prints its URL on
// stdout. For tests of the HTTP layer that need a real socket between two processes: a client
// and server sharing one event loop hide races of the connection (the oversized-body 413
// reached an in-process fetch every time, and another process's fetch a third of the time).
// Only routes that answer before a handler runs (body limits, 404s) work against it.
import { pino } from 'pino';
import { defaultConfig } from '../config.ts';
import type { Daemon } from '../daemon.ts';
import { buildServer } from './server.ts';

const daemon = { config: defaultConfig({}), version: 'test' } as unknown as Daemon;
const app = await buildServer(daemon, pino({ level: 'silent' }));
process.stdout.write(`${await app.listen({ host: '127.0.0.1', port: 0 })}\n`);
process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));

#!/usr/bin/env node
// The cluster node's fence watchdog (src/cluster/fence-watchdog.ts), started by kilnd: runs the
// TypeScript source directly, as bin/kiln.js does.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cluster/fence-watchdog.ts');
await main(process.argv.slice(2));

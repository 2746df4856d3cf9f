#!/usr/bin/env node
// Runs kiln's TypeScript sources directly (tsx's loader), so `npx kiln` works from a checkout
// with no build step.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');

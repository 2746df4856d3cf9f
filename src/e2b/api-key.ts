// The E2B API key of a kilnd: derived from its API token (HMAC-SHA256 under a fixed label) in
// E2B's `e2b_<hex>` form, which the SDK checks client-side. Derived rather than stored apart,
// so it changes exactly when the kiln token does and grants exactly what that token grants;
// written beside the token (<state dir>/e2b-api-key, 0600) for local clients to read.
import { createHmac } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { tokenMatches } from '../api/auth/token-file.ts';

export const E2B_KEY_FILE = 'e2b-api-key';

export function e2bApiKey(apiToken: string): string {
  return `e2b_${createHmac('sha256', apiToken).update('kiln e2b api key v1').digest('hex')}`;
}

export async function writeE2bApiKey(stateDir: string, key: string): Promise<string> {
  const file = path.join(stateDir, E2B_KEY_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, `${key}\n`, { mode: 0o600 });
  await fs.chmod(tmp, 0o600);
  await fs.rename(tmp, file);
  return file;
}

/** null key: kilnd runs with --no-auth (loopback only), and any key is taken. */
export function apiKeyMatches(given: string | undefined, key: string | null): boolean {
  if (key === null) return true;
  return given !== undefined && tokenMatches(given, key);
}

// kilnd's side of the API token: made at first start, kept in the state dir (0600), compared
// in constant time. KILN_API_TOKEN overrides the generated one and is written to the file, so
// the file always holds the token kilnd accepts and local clients read it without setup.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { apiTokenPath } from '../../sdk/api-token.ts';

/** 32 random bytes, base64url: header-safe and a valid WebSocket subprotocol token. */
export function newApiToken(): string {
  return randomBytes(32).toString('base64url');
}

/** Returns the token kilnd serves with: `override`, else the file's, else a new one. */
export async function ensureApiToken(stateDir: string, override?: string): Promise<string> {
  const file = apiTokenPath(stateDir);
  if (!override) {
    const existing = (await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return '';
      throw e;
    })).trim();
    if (existing) {
      await fs.chmod(file, 0o600);
      return existing;
    }
  }
  const token = override ?? newApiToken();
  // Written beside and renamed: a reader never sees a half-written token, and the file is
  // 0600 from its first byte.
  const tmp = path.join(stateDir, `.${path.basename(file)}.${process.pid}.tmp`);
  await fs.writeFile(tmp, token + '\n', { mode: 0o600, flag: 'w' });
  await fs.chmod(tmp, 0o600);
  await fs.rename(tmp, file);
  return token;
}

/** Constant-time: both sides hashed to the same length first, so length leaks nothing either. */
export function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

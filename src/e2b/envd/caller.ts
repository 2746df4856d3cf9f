// Who is calling envd and on which sandbox: the sandbox id comes from routing (header or host
// name, src/e2b/router.ts), the access token from X-Access-Token (compared in constant time
// with the one made at create), the user from envd's `Authorization: Basic base64(user:)`
// (E2B's default user when absent).
import { timingSafeEqual, createHash } from 'node:crypto';
import type { AgentClient } from '../../guest/agent/client.ts';
import type { VmRecord } from '../../store/store.ts';
import { E2bError } from '../errors.ts';
import type { GuestUser, SandboxService } from '../sandbox-service.ts';
import type { SandboxRecord } from '../sandbox-store.ts';

export interface Caller {
  sandbox: SandboxRecord;
  vm: VmRecord;
  agent: AgentClient;
  user: GuestUser;
}

function same(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/** The user named by a Basic header (`user:` with an empty password), or null. */
export function basicUser(authorization: string | null | undefined): string | null {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(authorization ?? '');
  if (!m) return null;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const name = decoded.split(':')[0] ?? '';
  return name || null;
}

/**
 * Resolves the caller; throws E2bError 401 for a wrong token or unknown user, 502 for a
 * sandbox that is gone or paused (what E2B's proxy answers then).
 */
export async function resolveCaller(
  sandboxes: SandboxService,
  sandboxId: string,
  headers: { token: string | null; authorization: string | null; user?: string | null },
): Promise<Caller> {
  const { sandbox, vm, agent } = await sandboxes.agent(sandboxId);
  if (headers.token === null || !same(headers.token, sandbox.accessToken)) {
    throw new E2bError(401, headers.token === null ? 'missing X-Access-Token header' : 'invalid access token');
  }
  const name = headers.user || basicUser(headers.authorization) || sandboxes.defaultUser;
  const user = await sandboxes.user(sandbox.id, vm, agent, name);
  return { sandbox, vm, agent, user };
}

// getent/useradd (passwd, libc-bin): the system account the VMMs run as. Looked up through
// NSS (getent) so an account from LDAP or systemd-sysusers counts too.
import { KilnError } from '../errors.ts';
import { run } from '../util/process.ts';

export interface UserIds {
  uid: number;
  gid: number;
}

/** uid and primary gid of `name`, or null when there is no such user. */
export async function lookupUser(name: string): Promise<UserIds | null> {
  const r = await run('getent', ['passwd', name], { okCodes: [0, 2] });
  const f = r.stdout.trim().split(':');
  if (r.code === 2 || f.length < 4) return null;
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

const NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/** Creates `name` as a system user (own group, no home, no login shell) unless it exists. */
export async function ensureSystemUser(name: string, comment = 'kiln VMM (QEMU runs as this user)'): Promise<UserIds> {
  if (!NAME.test(name)) throw new KilnError('KILN_ERR_VALIDATION', `not a valid user name: ${JSON.stringify(name)}`);
  const found = await lookupUser(name);
  if (found) return found;
  // Exit code 9: created meanwhile by someone else (another kilnd, setup-host.sh).
  await run('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--comment', comment, name], {
    okCodes: [0, 9],
  });
  const made = await lookupUser(name);
  if (!made) throw new KilnError('KILN_ERR_HOST_SETUP', `useradd ${name} succeeded but getent does not find it`);
  return made;
}

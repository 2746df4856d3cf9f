// `kiln doctor`'s Firecracker prerequisites beyond the binary and KVM: what kiln's driver
// itself needs on a real host (docs/firecracker-on-kvm.md). Each VMM runs in a private mount
// namespace (or its jail) so snapshots reopen drives at the same paths in every clone; its
// metrics go through a named pipe; taps are opened through /dev/net/tun; the jailer, on by
// default when present, runs it as an unprivileged uid whose version must match Firecracker's.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import { findBinary } from '../util/find-binary.ts';
import { run } from '../util/process.ts';
import { parseFirecrackerVersion } from '../vmm/firecracker/version.ts';
import type { BinaryFact, Check } from './checks.ts';

export interface FirecrackerSetupFacts {
  /** kilnd must be root: mount namespaces, taps, the jailer's chroot and mknod. */
  root: boolean;
  /** unshare, nsenter, mkfifo, mount: by name, null when missing. */
  tools: Record<string, string | null>;
  /** `unshare --mount` worked here (null: not tried, unshare missing). */
  mountNamespace: string | null | 'ok';
  devNetTun: boolean;
  /** KILN_FIRECRACKER_JAILER and the jail's ids as kilnd would read them. */
  jailer: { mode: string; uid: string; gid: string };
}

const TOOLS = ['unshare', 'nsenter', 'mkfifo', 'mount'];

export async function gatherFirecrackerSetup(env: NodeJS.ProcessEnv = process.env): Promise<FirecrackerSetupFacts> {
  const tools = Object.fromEntries(await Promise.all(TOOLS.map(async (t) => [t, await findBinary(t, env)] as const)));
  let mountNamespace: FirecrackerSetupFacts['mountNamespace'] = null;
  if (tools.unshare) {
    mountNamespace = await run(tools.unshare, ['--mount', '--propagation', 'private', '--', 'true'], { timeoutMs: 5000 }).then(
      () => 'ok' as const,
      (e: Error) => e.message.split('\n')[0] ?? 'failed',
    );
  }
  return {
    root: process.getuid?.() === 0,
    tools,
    mountNamespace,
    devNetTun: await fs.access('/dev/net/tun', constants.R_OK | constants.W_OK).then(() => true, () => false),
    jailer: {
      mode: env.KILN_FIRECRACKER_JAILER ?? 'auto',
      uid: env.KILN_FIRECRACKER_JAIL_UID ?? '65534',
      gid: env.KILN_FIRECRACKER_JAIL_GID ?? '65534',
    },
  };
}

const check = (name: string, status: Check['status'], detail: string, fix?: string): Check => ({ scope: 'firecracker', name, status, detail, ...(fix ? { fix } : {}) });

export function firecrackerSetupChecks(s: FirecrackerSetupFacts, firecracker: BinaryFact | null, jailer: BinaryFact | null): Check[] {
  const out: Check[] = [];
  out.push(
    s.root
      ? check('root', 'ok', 'kilnd runs as root (mount namespaces, taps, the jailer)')
      : check('root', 'fail', 'not root: kilnd cannot give Firecracker its mount namespace, taps or jail', 'run kilnd as root (sudo kiln serve)'),
  );
  const missing = TOOLS.filter((t) => !s.tools[t]);
  out.push(
    missing.length
      ? check('util-linux tools', 'fail', `missing: ${missing.join(', ')}`, 'apt-get install util-linux coreutils mount')
      : check('util-linux tools', 'ok', TOOLS.join(', ')),
  );
  out.push(
    s.mountNamespace === 'ok'
      ? check('path view', 'ok', 'a private mount namespace per VMM works: snapshots reopen drives and vsock at the same paths in every clone')
      : check(
          'path view',
          'fail',
          `\`unshare --mount\` failed (${s.mountNamespace ?? 'unshare missing'}): clones could not reopen their drives at the paths a snapshot recorded`,
          'run kilnd as root on a host that allows mount namespaces (not inside an unprivileged container)',
        ),
  );
  out.push(
    s.devNetTun
      ? check('/dev/net/tun', 'ok', 'taps can be opened')
      : check('/dev/net/tun', 'fail', '/dev/net/tun is missing or not readable and writable', 'modprobe tun'),
  );

  const ids = [s.jailer.uid, s.jailer.gid].map(Number);
  if (!['auto', 'on', 'off'].includes(s.jailer.mode)) {
    out.push(check('jail', 'fail', `KILN_FIRECRACKER_JAILER=${s.jailer.mode}`, 'set KILN_FIRECRACKER_JAILER to auto, on or off'));
  } else if (s.jailer.mode === 'off') {
    out.push(check('jail', 'warn', 'off (KILN_FIRECRACKER_JAILER=off): every Firecracker runs as root, unchrooted', 'unset KILN_FIRECRACKER_JAILER to jail each VMM'));
  } else if (!jailer) {
    out.push(
      check(
        'jail',
        s.jailer.mode === 'on' ? 'fail' : 'warn',
        'no jailer binary: every Firecracker runs as root, unchrooted (in its own mount namespace)',
        'install `jailer` from the same release archive as firecracker, beside it',
      ),
    );
  } else if (!ids.every((n) => Number.isInteger(n) && n > 0)) {
    out.push(check('jail', 'fail', `jail uid/gid ${s.jailer.uid}:${s.jailer.gid} is not an unprivileged id`, 'set KILN_FIRECRACKER_JAIL_UID/GID to a dedicated non-root user'));
  } else {
    out.push(check('jail', 'ok', `on: each Firecracker runs as ${s.jailer.uid}:${s.jailer.gid}, chrooted (${jailer.path}); taps are made for that uid`));
    const fv = parseFirecrackerVersion(firecracker?.version ?? '');
    const jv = parseFirecrackerVersion(jailer.version ?? '');
    if (fv && jv && fv.raw !== jv.raw) {
      out.push(check('jailer version', 'warn', `jailer v${jv.raw} with firecracker v${fv.raw}`, 'use the jailer from the same release archive as firecracker'));
    }
  }
  out.push(check('classic VMs', 'ok', 'refused on Firecracker (it cannot tell a guest reboot from a power-off or a crash): they run with KILN_BACKEND=qemu'));
  return out;
}

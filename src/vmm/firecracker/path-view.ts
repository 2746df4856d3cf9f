// A stable path view for a Firecracker that runs without the jailer. Firecracker records every
// drive's `path_on_host` and the vsock `uds_path` in a snapshot and reopens them there on
// load ("host-resources need to be accessible at the same relative paths",
// snapshot-support.md); the API has no drive override, and `vsock_override` exists only from
// 1.16. kiln's per-VM files live in per-VM runtime dirs, so paths recorded by a template would
// name the template's own (deleted, or live and writable) files in every clone.
//
// So each VMM runs in a private mount namespace where its VM's view directory
// (`<runtimeDir>/fc-view`: `drives/<id>` and `vsock` as symlinks to the VM's real files) is
// bind-mounted on one fixed path, VIEW_MOUNT. Every VMM sees its own VM there; a snapshot
// records only VIEW_MOUNT paths, and a clone's view points them at the clone's files. Under the
// jailer the jail's fixed layout plays this role (jailer.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import type { BootContext, BootStep } from './boot-steps.ts';
import { apiIdFor } from './spec.ts';
import type { StepList } from '../../util/steps.ts';

/** Where every VMM sees its own VM's view (an empty directory on the host). */
export const VIEW_MOUNT = '/run/kiln-firecracker';

export const VIEW = {
  drivesDir: 'drives',
  /** A link to the directory holding the vsock socket (the guest-initiated `<uds>_<port>` listeners live there too). */
  vsockDir: 'vsock',
} as const;

/** The VMM-side path of drive `id`: the same for every VM. */
export const viewDrivePath = (id: string) => path.posix.join(VIEW_MOUNT, VIEW.drivesDir, apiIdFor(id));
/** The VMM-side path of the vsock socket named `base`. */
export const viewVsockPath = (base: string) => path.posix.join(VIEW_MOUNT, VIEW.vsockDir, base);

/**
 * The command that runs `argv` in a private mount namespace with `viewDir` bound on
 * VIEW_MOUNT. unshare and sh exec in place: the pid kilnd gets is Firecracker's, and its
 * command line is Firecracker's (attach() checks it).
 */
export function viewSpawnArgv(viewDir: string, argv: string[]): string[] {
  return [
    'unshare', '--mount', '--propagation', 'private', '--',
    'sh', '-c', 'set -e; mount --bind -- "$1" "$2"; shift 2; exec "$@"', 'kiln-fc-view', viewDir, VIEW_MOUNT,
    ...argv,
  ];
}

/** Builds `<runtimeDir>/fc-view` and points the VMM's drive and vsock paths into VIEW_MOUNT. */
export const pathView: BootStep = {
  name: 'fc.pathView',
  async run(ctx) {
    const view = path.join(ctx.paths.dir, 'fc-view');
    await fs.rm(view, { recursive: true, force: true });
    await fs.mkdir(path.join(view, VIEW.drivesDir), { recursive: true, mode: 0o750 });
    await fs.mkdir(VIEW_MOUNT, { recursive: true, mode: 0o755 });
    const mapped = new Map<string, string>();
    for (const d of ctx.spec.drives) {
      const id = apiIdFor(d.id);
      await fs.symlink(path.resolve(d.path), path.join(view, VIEW.drivesDir, id));
      mapped.set(d.path, viewDrivePath(d.id));
    }
    if (ctx.vsockPath) {
      const dir = path.dirname(path.resolve(ctx.vsockPath));
      // A link into a jail an earlier, jailed boot left (jailer.ts): this boot's socket lives here.
      if ((await fs.lstat(dir).catch(() => null))?.isSymbolicLink()) await fs.unlink(dir);
      await fs.mkdir(dir, { recursive: true, mode: 0o750 });
      await fs.symlink(dir, path.join(view, VIEW.vsockDir));
      mapped.set(ctx.vsockPath, viewVsockPath(path.basename(ctx.vsockPath)));
    }
    ctx.viewDir = view;
    ctx.vmmPath = (host) => mapped.get(host) ?? host;
  },
};

/** Runs the VMM in its path view. Fails loudly when an anchor step is missing. */
export function withPathView(list: StepList<BootContext>): StepList<BootContext> {
  if (!list.has('fc.spawn')) throw new KilnError('KILN_ERR_INTERNAL', 'the path view wraps fc.spawn, which is not in the step list');
  list.insertAfter(list.has('fc.kernel') ? 'fc.kernel' : 'fc.prepare', pathView);
  return list;
}

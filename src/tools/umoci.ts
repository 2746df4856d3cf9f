// umoci: builds OCI image layouts from directory changes (tests make their images with it:
// it writes real whiteouts for deletions and opaque markers for --opaque inserts).
import { run } from '../util/process.ts';

const T = { timeoutMs: 300_000 };

export async function umociInit(layout: string): Promise<void> {
  await run('umoci', ['init', '--layout', layout], T);
}

/** A new empty image (no layers) at layout:tag. */
export async function umociNew(image: string): Promise<void> {
  await run('umoci', ['new', '--image', image], T);
}

/** Unpacks layout:tag into a runtime bundle (bundle/rootfs); as root, owners are kept. */
export async function umociUnpack(image: string, bundle: string): Promise<void> {
  await run('umoci', ['unpack', '--image', image, bundle], T);
}

/** Adds a layer with everything that changed in bundle/rootfs since unpack / the last repack. */
export async function umociRepack(image: string, bundle: string): Promise<void> {
  await run('umoci', ['repack', '--no-history', '--image', image, bundle], T);
}

/** Adds a layer holding `source` at `target`; `opaque` hides whatever lower layers had there. */
export async function umociInsert(image: string, source: string, target: string, opts: { opaque?: boolean; tag?: string } = {}): Promise<void> {
  const args = ['insert', '--no-history', '--image', image];
  if (opts.opaque) args.push('--opaque');
  if (opts.tag) args.push('--tag', opts.tag);
  await run('umoci', [...args, source, target], T);
}

export interface UmociConfig {
  entrypoint?: string[];
  cmd?: string[];
  env?: string[];
  workdir?: string;
  user?: string;
  labels?: Record<string, string>;
  exposedPorts?: string[];
  architecture?: string;
  os?: string;
}

/** Rewrites the image config (optionally under a new tag). */
export async function umociConfig(image: string, c: UmociConfig, tag?: string): Promise<void> {
  const args = ['config', '--no-history', '--image', image];
  if (tag) args.push('--tag', tag);
  if (c.entrypoint) {
    args.push('--clear=config.entrypoint');
    for (const e of c.entrypoint) args.push('--config.entrypoint', e);
  }
  if (c.cmd) {
    args.push('--clear=config.cmd');
    for (const e of c.cmd) args.push('--config.cmd', e);
  }
  for (const e of c.env ?? []) args.push('--config.env', e);
  if (c.workdir !== undefined) args.push('--config.workingdir', c.workdir);
  if (c.user !== undefined) args.push('--config.user', c.user);
  for (const [k, v] of Object.entries(c.labels ?? {})) args.push('--config.label', `${k}=${v}`);
  for (const p of c.exposedPorts ?? []) args.push('--config.exposedports', p);
  if (c.architecture) args.push('--architecture', c.architecture);
  if (c.os) args.push('--os', c.os);
  await run('umoci', args, T);
}

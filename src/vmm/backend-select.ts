// Which VMM backend kilnd runs. 'auto' takes Firecracker (the production VMM) when its
// binary is there and KVM really boots a guest here (the accelerator probe's verdict, see
// accel-probe.ts), QEMU otherwise; the decision and its reason are logged and in /healthz.
import { KilnError } from '../errors.ts';
import { findBinary } from '../util/find-binary.ts';
import { run } from '../util/process.ts';
import { MIN_SUPPORTED, atLeast, parseFirecrackerVersion } from './firecracker/version.ts';
import type { AccelDecision } from './accel-probe.ts';
import type { BackendName } from './driver.ts';

export interface BackendDecision {
  backend: BackendName;
  reason: string;
  /** The Firecracker binary, when the decision is Firecracker. */
  firecrackerBinary?: string;
}

export interface BackendInputs {
  requested: BackendName | 'auto';
  /** KILN_FIRECRACKER_BIN / config; default: `firecracker` on PATH. */
  firecrackerBinary?: string;
  accel: AccelDecision;
  /** Injected for tests; default looks at the filesystem and PATH. */
  find?: (name: string) => Promise<string | null>;
  /** `<binary> --version` output; injected for tests. */
  versionOf?: (binary: string) => Promise<string>;
}

async function firecrackerVersionText(binary: string): Promise<string> {
  const { stdout } = await run(binary, ['--version'], { timeoutMs: 10_000 });
  return stdout;
}

/** Why this Firecracker is too old (or unreadable) for kiln's driver, or null. */
async function versionBlocker(binary: string, versionOf: (b: string) => Promise<string>): Promise<string | null> {
  let text: string;
  try {
    text = await versionOf(binary);
  } catch (e) {
    return `\`${binary} --version\` failed (${(e as Error).message.split('\n')[0]})`;
  }
  const v = parseFirecrackerVersion(text);
  if (!v) return `\`${binary} --version\` printed no version (${JSON.stringify(text.slice(0, 80))})`;
  if (!atLeast(v, MIN_SUPPORTED.major, MIN_SUPPORTED.minor, MIN_SUPPORTED.patch)) {
    return `Firecracker ${v.raw} is older than ${MIN_SUPPORTED.raw}, the oldest API kiln's driver is tested against (upgrade it)`;
  }
  return null;
}

/** Why Firecracker cannot run here, or null when it can. */
function firecrackerBlockers(binary: string | null, wanted: string, accel: AccelDecision): string[] {
  const why: string[] = [];
  if (!binary) {
    why.push(
      wanted.includes('/')
        ? `Firecracker binary ${wanted} is missing or not executable`
        : 'no firecracker binary on PATH (install it or set KILN_FIRECRACKER_BIN)',
    );
  }
  // The accelerator's reason ends with its own fallback ("; using TCG …"): not ours to repeat.
  if (accel.accelerator !== 'kvm') why.push(`KVM does not boot a guest here (${accel.reason.replace(/; using TCG.*$/, '')})`);
  return why;
}

export async function decideBackend(i: BackendInputs): Promise<BackendDecision> {
  const find = i.find ?? ((n: string) => findBinary(n));
  if (i.requested === 'qemu') return { backend: 'qemu', reason: 'QEMU requested by configuration' };
  const wanted = i.firecrackerBinary ?? 'firecracker';
  const binary = await find(wanted);
  const blockers = firecrackerBlockers(binary, wanted, i.accel);
  if (binary) {
    const old = await versionBlocker(binary, i.versionOf ?? firecrackerVersionText);
    if (old) blockers.unshift(old);
  }
  if (i.requested === 'firecracker') {
    if (blockers.length) {
      throw new KilnError('KILN_ERR_HOST_SETUP', `Firecracker backend requested but ${blockers.join('; ')} (run \`kiln doctor\`)`, {
        backend: 'firecracker',
        blockers,
      });
    }
    return { backend: 'firecracker', reason: `Firecracker requested by configuration (${binary}, KVM usable)`, firecrackerBinary: binary! };
  }
  if (!blockers.length) {
    return { backend: 'firecracker', reason: `auto: ${binary} found and KVM boots a guest`, firecrackerBinary: binary! };
  }
  return { backend: 'qemu', reason: `auto: QEMU, because ${blockers.join('; ')}` };
}

// Which backend the VM-level suites run against (KILN_BACKEND, default auto) and, when it is
// Firecracker on a host that cannot run it, why they are skipped. Each integration test file
// passes BACKEND_SKIP as `skip` to its tests and guards its hooks with it, so the suites run
// unchanged wherever Firecracker and KVM are there.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { findBinary } from '../../src/util/find-binary.ts';
import { TEST_ASSETS_DIR } from './kilnd.ts';

export interface BackendHost {
  requested: string;
  firecrackerBinary: string;
  /** Path of the binary, or null. */
  found: string | null;
  /** null when /dev/kvm opens read-write, else why not. */
  kvmUnusable: string | null;
  /** The accelerator probe's cached verdict (accel-probe.json): null = KVM boots, undefined = not probed yet. */
  probeFailure: string | null | undefined;
}

/** Why the VM-level suites cannot run against the requested backend here, or undefined. */
export function skipReasonFor(h: BackendHost): string | undefined {
  if (h.requested !== 'firecracker') return undefined;
  const why: string[] = [];
  if (!h.found) why.push(`no ${h.firecrackerBinary} binary ${h.firecrackerBinary.includes('/') ? 'there' : 'on PATH'} (set KILN_FIRECRACKER_BIN)`);
  if (h.kvmUnusable) why.push(h.kvmUnusable);
  else if (h.probeFailure) why.push(`KVM does not boot a guest here (${h.probeFailure})`);
  if (!why.length) return undefined;
  return `KILN_BACKEND=firecracker needs a host with Firecracker and KVM: ${why.join('; ')}. These VM-level tests run unchanged on such a host; the driver itself is covered here by src/vmm/firecracker/*.test.ts`;
}

export async function backendHost(env: NodeJS.ProcessEnv = process.env): Promise<BackendHost> {
  const firecrackerBinary = env.KILN_FIRECRACKER_BIN ?? 'firecracker';
  const kvmUnusable = await fs.open('/dev/kvm', constants.O_RDWR).then(
    async (h) => {
      await h.close();
      return null;
    },
    (e: NodeJS.ErrnoException) => `/dev/kvm is not usable (${e.code})`,
  );
  const bootId = (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
  const cached = await fs.readFile(path.join(TEST_ASSETS_DIR, 'accel-probe.json'), 'utf8').then(JSON.parse, () => null);
  // The probe's verdict holds for this host boot only (accel-probe.ts keys it so).
  const cache = typeof cached?.key === 'string' && cached.key.startsWith(`${bootId}|`) ? cached : null;
  return {
    requested: env.KILN_BACKEND ?? 'auto',
    firecrackerBinary,
    found: await findBinary(firecrackerBinary, env),
    kvmUnusable,
    probeFailure: cache && 'failure' in cache ? (cache.failure as string | null) : undefined,
  };
}

/** For `test(name, { skip: BACKEND_SKIP }, …)`: undefined where the suite runs. */
export const BACKEND_SKIP: string | undefined = skipReasonFor(await backendHost());

// skopeo copy: moves images between OCI layouts, registries and docker-archive tarballs
// (tests push the images they build with it, and make docker-save archives).
import { run } from '../util/process.ts';

export interface SkopeoCopyOptions {
  /** Manifest format at the destination: 'oci' or Docker schema 2 ('v2s2'). */
  format?: 'oci' | 'v2s2';
  /** Re-compress layers (zstd needs format 'oci'). */
  compressFormat?: 'gzip' | 'zstd';
  /** Plain HTTP / unverified TLS for a docker:// destination or source. */
  insecure?: boolean;
  destCreds?: { username: string; password: string };
  srcCreds?: { username: string; password: string };
}

export async function skopeoCopy(src: string, dest: string, o: SkopeoCopyOptions = {}): Promise<void> {
  // --insecure-policy: the host may have no /etc/containers/policy.json; trust policy is not what
  // kiln uses skopeo for.
  const args = ['--insecure-policy', 'copy', '--quiet', '--retry-times', '0'];
  if (o.format) args.push('--format', o.format);
  if (o.compressFormat) args.push('--dest-compress-format', o.compressFormat);
  if (dest.startsWith('docker://')) args.push(`--dest-tls-verify=${o.insecure ? 'false' : 'true'}`);
  if (src.startsWith('docker://')) args.push(`--src-tls-verify=${o.insecure ? 'false' : 'true'}`);
  if (o.destCreds) args.push('--dest-creds', `${o.destCreds.username}:${o.destCreds.password}`);
  if (o.srcCreds) args.push('--src-creds', `${o.srcCreds.username}:${o.srcCreds.password}`);
  await run('skopeo', [...args, src, dest], { timeoutMs: 600_000 });
}

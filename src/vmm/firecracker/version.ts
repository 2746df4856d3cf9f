// Which Firecracker kiln is talking to, and what that release's API accepts. The two
// definitions kiln is built against are v1.13.1 (the baseline) and v1.16.1; a field that
// appears only in the v1.16.1 definition is sent only to a server that reports ≥ 1.16.0
// (releases in between are treated as 1.13: Firecracker refuses unknown fields, so guessing
// high would fail the whole request, guessing low only forgoes an optional feature).
import { KilnError } from '../../errors.ts';
import type { FirecrackerApiClient } from './api-client.ts';

export interface FirecrackerVersion {
  /** As reported, e.g. "1.13.1" or "1.16.0-dev". */
  raw: string;
  major: number;
  minor: number;
  patch: number;
}

export interface FirecrackerCapabilities {
  version: FirecrackerVersion;
  /** SnapshotLoadParams.network_overrides (in the v1.13.1 definition). */
  networkOverrides: boolean;
  /** SnapshotLoadParams.vsock_override (v1.16.1 only). */
  vsockOverride: boolean;
  /** SnapshotLoadParams.clock_realtime (v1.16.1 only). */
  clockRealtime: boolean;
  /** NetworkInterface.mtu (v1.16.1 only). */
  netMtu: boolean;
  /** PUT /serial (v1.16.1 only). */
  serialDevice: boolean;
}

export const MIN_SUPPORTED: Readonly<FirecrackerVersion> = { raw: '1.13.0', major: 1, minor: 13, patch: 0 };

/** Parses "1.13.1", "v1.13.1", "1.16.0-dev" or `firecracker --version` output. */
export function parseFirecrackerVersion(text: string): FirecrackerVersion | null {
  const m = /v?(\d+)\.(\d+)\.(\d+)([-+][0-9A-Za-z.-]+)?/.exec(text);
  if (!m) return null;
  return { raw: m[0].replace(/^v/, ''), major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) };
}

export function atLeast(v: FirecrackerVersion, major: number, minor: number, patch = 0): boolean {
  if (v.major !== major) return v.major > major;
  if (v.minor !== minor) return v.minor > minor;
  return v.patch >= patch;
}

export function capabilitiesOf(version: FirecrackerVersion): FirecrackerCapabilities {
  const v116 = atLeast(version, 1, 16);
  return {
    version,
    networkOverrides: atLeast(version, 1, 13),
    vsockOverride: v116,
    clockRealtime: v116,
    netMtu: v116,
    serialDevice: v116,
  };
}

export function assertSupported(version: FirecrackerVersion): void {
  if (!atLeast(version, MIN_SUPPORTED.major, MIN_SUPPORTED.minor, MIN_SUPPORTED.patch)) {
    throw new KilnError(
      'KILN_ERR_HOST_SETUP',
      `Firecracker ${version.raw} is older than ${MIN_SUPPORTED.raw}, the oldest release kiln's driver speaks`,
      { firecracker_version: version.raw },
    );
  }
}

/** GET /version, parsed; an unparsable answer is an error (the server is not Firecracker). */
export async function fetchCapabilities(client: FirecrackerApiClient, signal?: AbortSignal): Promise<FirecrackerCapabilities> {
  const body = await client.getVersion(signal);
  const version = parseFirecrackerVersion(body.firecracker_version ?? '');
  if (!version) {
    throw new KilnError('KILN_ERR_VMM_FAILED', `GET /version answered an unrecognised version ${JSON.stringify(body)}`);
  }
  return capabilitiesOf(version);
}

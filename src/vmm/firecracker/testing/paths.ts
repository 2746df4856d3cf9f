// Where the test fixtures live: Firecracker's API definitions are vendored in vendor/firecracker/
// (Apache-2.0, unmodified; see the README and LICENSE there), so every clone runs the contract tests.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** src/vmm/firecracker/testing → the repository root. */
export const repoRoot = path.resolve(fileURLToPath(import.meta.url), '../../../../..');

export const SPEC_VERSIONS = ['1.13.1', '1.16.1'] as const;
export type SpecVersion = (typeof SPEC_VERSIONS)[number];

export function specFile(version: string): string {
  return path.join(repoRoot, 'vendor', 'firecracker', `firecracker-v${version}-api.yaml`);
}

export const fakeFirecrackerEntry = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-firecracker.ts');
export const fakeJailerEntry = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-jailer.ts');

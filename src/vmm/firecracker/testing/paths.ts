// Where the test fixtures live: the Firecracker API definitions sit beside the repo, in
// ../shared/reference (they are upstream documents, not part of kiln).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** src/vmm/firecracker/testing → the repository root. */
export const repoRoot = path.resolve(fileURLToPath(import.meta.url), '../../../../..');

export const SPEC_VERSIONS = ['1.13.1', '1.16.1'] as const;
export type SpecVersion = (typeof SPEC_VERSIONS)[number];

export function specFile(version: string): string {
  return path.resolve(repoRoot, `../shared/reference/firecracker-v${version}-api.yaml`);
}

/** A skip reason for node:test when the definition is not there, else false. */
export function specMissing(version: string): string | false {
  const f = specFile(version);
  return existsSync(f) ? false : `Firecracker API definition not found at ${f}; contract tests need ../shared/reference`;
}

export const fakeFirecrackerEntry = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-firecracker.ts');
export const fakeJailerEntry = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fake-jailer.ts');

// Shared test fixtures: fake `firecracker`/`jailer` executables, VM assets, and reading back
// what the fake VMM recorded.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FirecrackerVmSpec } from '../spec.ts';
import { fakeFirecrackerEntry, fakeJailerEntry } from './paths.ts';
import type { RecordedRequest } from './stand-in.ts';

/** Short temp dirs: Unix socket paths must stay under 108 bytes. */
export async function tempDir(tag: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `fc-${tag}-`));
}

export interface FakeBinaries {
  firecracker: string;
  jailer: string;
}

function wrapper(entry: string): string {
  const tsx = import.meta.resolve('tsx');
  // exec -a keeps "$0" as argv[0], so /proc/<pid>/cmdline starts with the binary's own path.
  return `#!/bin/bash\nexec -a "$0" ${JSON.stringify(process.execPath)} --import ${JSON.stringify(tsx)} ${JSON.stringify(entry)} "$@"\n`;
}

/** Writes `firecracker` and `jailer` into `dir` (an executable named firecracker, as the jailer expects). */
export async function writeFakeBinaries(dir: string): Promise<FakeBinaries> {
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin, { recursive: true });
  const firecracker = path.join(bin, 'firecracker');
  const jailer = path.join(bin, 'jailer');
  await fs.writeFile(firecracker, wrapper(fakeFirecrackerEntry), { mode: 0o755 });
  await fs.writeFile(jailer, wrapper(fakeJailerEntry), { mode: 0o755 });
  return { firecracker, jailer };
}

export interface Assets {
  kernel: string;
  initrd: string;
  rootImage: string;
  scratch: string;
}

/** A kernel that passes the ELF check, an initrd, a read-only image and a writable drive. */
export async function makeAssets(dir: string): Promise<Assets> {
  const a = path.join(dir, 'assets');
  await fs.mkdir(a, { recursive: true });
  const f = (n: string) => path.join(a, n);
  await fs.writeFile(f('vmlinux'), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]), Buffer.alloc(57)]));
  await fs.writeFile(f('initrd.img'), 'initramfs');
  await fs.writeFile(f('rootfs.squashfs'), 'squashfs');
  await fs.writeFile(f('scratch.ext4'), 'ext4');
  return { kernel: f('vmlinux'), initrd: f('initrd.img'), rootImage: f('rootfs.squashfs'), scratch: f('scratch.ext4') };
}

export function baseSpec(dir: string, assets: Assets, id = 'vm-1', extra: Partial<FirecrackerVmSpec> = {}): FirecrackerVmSpec {
  return {
    id,
    runtimeDir: path.join(dir, 'vms', id),
    vcpus: 2,
    memoryMib: 256,
    accelerator: 'kvm',
    kernel: { path: assets.kernel, initrd: assets.initrd, cmdline: 'console=ttyS0 reboot=k panic=1 quiet' },
    drives: [
      { id: 'root', path: assets.rootImage, readOnly: true },
      { id: 'scratch-1', path: assets.scratch, readOnly: false },
    ],
    ...extra,
  };
}

export async function readRecords(file: string): Promise<RecordedRequest[]> {
  const raw = await fs.readFile(file, 'utf8').catch(() => '');
  return raw
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as RecordedRequest);
}

export const opsOf = (records: RecordedRequest[]) => records.map((r) => `${r.method} ${r.path}`);

/** Waits (event-driven, via fs.watch) until `file` contains `text`. */
export async function waitForText(file: string, text: string, timeoutMs = 5000): Promise<string> {
  const { watch } = await import('node:fs');
  const read = () => fs.readFile(file, 'utf8').catch(() => '');
  return new Promise<string>((resolve, reject) => {
    const w = watch(path.dirname(file), () => void check());
    const timer = setTimeout(async () => {
      w.close();
      reject(new Error(`"${text}" did not appear in ${file} within ${timeoutMs} ms; it has: ${(await read()).slice(-500)}`));
    }, timeoutMs);
    const check = async () => {
      const s = await read();
      if (s.includes(text)) {
        clearTimeout(timer);
        w.close();
        resolve(s);
      }
    };
    void check();
  });
}

/**
 * Every problem with what the fake VMM received: violations it recorded, failed answers, and
 * a second validation here, in the test process, against the definition the test loaded.
 */
export function contractProblems(spec: { validateRequest(m: string, p: string, b: unknown): string[] }, records: RecordedRequest[]): string[] {
  return records.flatMap((r) => [
    ...r.violations.map((v) => `${r.method} ${r.path}: ${v}`),
    ...(r.status >= 300 ? [`${r.method} ${r.path}: answered ${r.status} ${r.fault ?? ''}`] : []),
    ...spec.validateRequest(r.method, r.path, r.body).map((v) => `${r.method} ${r.path}: ${v}`),
  ]);
}

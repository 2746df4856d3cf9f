// `kiln doctor`: what this host has and lacks for each VMM backend, with a fix for every
// failed check. Runs locally (no kilnd needed: it is most useful when kilnd will not start).
import { Command } from 'commander';
import path from 'node:path';
import { defaultConfig } from '../config.ts';
import { evaluate, type CheckStatus, type DoctorReport } from '../doctor/checks.ts';
import { gatherHostFacts } from '../doctor/host-facts.ts';
import { printJson, printTable } from './output.ts';

const MARK: Record<CheckStatus, string> = { ok: 'ok', warn: 'WARN', fail: 'FAIL' };

/** Exit status: 0 when `backend` (or, without one, any backend) can run here, else 1. */
export function doctorExitCode(r: DoctorReport, backend?: 'qemu' | 'firecracker'): number {
  if (backend) return r.backends[backend].usable ? 0 : 1;
  return r.backends.qemu.usable || r.backends.firecracker.usable ? 0 : 1;
}

export function printDoctor(r: DoctorReport): void {
  printTable(['scope', 'check', 'status', 'found'], r.checks.map((c) => [c.scope, c.name, MARK[c.status], c.detail]));
  const fixes = r.checks.filter((c) => c.fix && c.status !== 'ok');
  if (fixes.length) {
    process.stdout.write('\nFixes:\n');
    for (const c of fixes) process.stdout.write(`  [${c.scope}] ${c.name}: ${c.fix}\n`);
  }
  process.stdout.write('\nBackends:\n');
  for (const [name, v] of Object.entries(r.backends)) {
    process.stdout.write(`  ${name}: ${v.usable ? 'usable' : 'NOT usable'} (${v.summary})\n`);
  }
}

export function doctorCommand(json: () => boolean): Command {
  return new Command('doctor')
    .description('check this host for each VMM backend (QEMU, Firecracker) and say how to fix what is missing')
    .option('--backend <qemu|firecracker>', 'exit 1 unless this backend can run here')
    .option('--assets-dir <dir>', 'kilnd assets dir (kernel, KVM probe verdict); default as `kiln serve`')
    .action(async (o: { backend?: string; assetsDir?: string }) => {
      if (o.backend && o.backend !== 'qemu' && o.backend !== 'firecracker') throw new Error('--backend must be qemu or firecracker');
      const config = defaultConfig();
      const facts = await gatherHostFacts({
        assetsDir: o.assetsDir ? path.resolve(o.assetsDir) : config.assetsDir,
        firecrackerBinary: config.firecrackerBinary,
        kernelPath: config.kernelPath,
        vmm: config.vmm,
      });
      const report = evaluate(facts);
      if (json()) printJson(report);
      else printDoctor(report);
      process.exitCode = doctorExitCode(report, o.backend as 'qemu' | 'firecracker' | undefined);
    });
}

// `<tool> --version` for `kiln doctor`: the first non-empty line, or null when the tool
// printed nothing or failed (the caller reports the tool as found but unversioned).
import { run } from '../util/process.ts';

export async function toolVersion(binary: string, args: readonly string[] = ['--version']): Promise<string | null> {
  try {
    const { stdout, stderr } = await run(binary, args, { timeoutMs: 10_000, okCodes: [0, 1] });
    return (stdout + '\n' + stderr).split('\n').map((l) => l.trim()).find(Boolean) ?? null;
  } catch {
    return null;
  }
}

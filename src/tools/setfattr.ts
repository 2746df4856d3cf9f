// setfattr (attr): Node has no xattr API. Used per file that carries xattrs in an image layer
// (file capabilities, SELinux labels), which is rare enough that a process per file is fine.
import { run } from '../util/process.ts';

/** Sets `name` on `file` itself (never through a symlink); the value is passed hex-encoded (binary-safe). */
export async function setXattr(file: string, name: string, value: Buffer): Promise<void> {
  await run('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, '--', file]);
}

export async function getXattrs(file: string): Promise<Map<string, Buffer>> {
  const { stdout } = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', file], { okCodes: [0, 1] });
  const out = new Map<string, Buffer>();
  for (const line of stdout.split('\n')) {
    const m = /^([^#=][^=]*)=0x([0-9a-f]*)$/.exec(line.trim());
    if (m) out.set(m[1]!, Buffer.from(m[2]!, 'hex'));
  }
  return out;
}

// `kiln exec VM -- cmd…` and `kiln cp SRC DST` (one side `VM:/path`), through the guest agent.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Command } from 'commander';
import type { KilnClient } from '../sdk/client.ts';

/** stdin is read whole before the command starts (the API takes it in the request). */
const STDIN_MAX = 16 * 1024 * 1024;

async function readStdin(): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of process.stdin) {
    n += (c as Buffer).length;
    if (n > STDIN_MAX) throw new Error(`stdin is larger than ${STDIN_MAX} bytes; use kiln cp for large inputs`);
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

/** `VM:/path` → {vm, path}; a plain local path → null. `./a:b` stays local. */
export function parseRemote(spec: string): { vm: string; path: string } | null {
  const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*):(\/.*)$/.exec(spec);
  return m ? { vm: m[1]!, path: m[2]! } : null;
}

export function execCommands(client: () => KilnClient): Command[] {
  const exec = new Command('exec')
    .argument('<vm>', 'id or name')
    .argument('<cmd...>', 'command and arguments (put them after --)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('-w, --workdir <dir>', 'working directory in the guest')
    .option('-u, --user <uid[:gid]>', 'user to run as (default: the workload’s)')
    .option('-i, --interactive', 'pass this terminal’s stdin (read to the end first)')
    .option('-t, --timeout <ms>', 'kill the command after this many ms', Number)
    .description('run a command in a VM; exits with its exit code (128+n if killed by signal n)')
    .action(async (vm: string, cmd: string[], o) => {
      const env: Record<string, string> = {};
      for (const e of o.env as string[]) {
        const i = e.indexOf('=');
        if (i <= 0) throw new Error(`--env wants KEY=VALUE, got ${JSON.stringify(e)}`);
        env[e.slice(0, i)] = e.slice(i + 1);
      }
      const stdin = o.interactive ? await readStdin() : undefined;
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      let code = 1;
      for await (const item of client().execStream(vm, { cmd, env, cwd: o.workdir, user: o.user, stdin, timeoutMs: o.timeout }, ac.signal)) {
        if ('stream' in item) (item.stream === 'stdout' ? process.stdout : process.stderr).write(item.data);
        else {
          if (item.exit.timed_out) process.stderr.write(`kiln: command timed out after ${o.timeout} ms\n`);
          code = item.exit.exit_code ?? 128 + (item.exit.signal ?? 0);
        }
      }
      process.exitCode = code;
    });

  const cp = new Command('cp')
    .argument('<src>', 'local path or VM:/path')
    .argument('<dst>', 'local path or VM:/path')
    .option('--mode <octal>', 'permissions of a file written into the VM (default: the source file’s)')
    .option('-p, --parents', 'create missing directories in the VM')
    .description('copy a file into or out of a VM (`-` is stdin/stdout)')
    .action(async (src: string, dst: string, o) => {
      const from = parseRemote(src);
      const to = parseRemote(dst);
      if (Boolean(from) === Boolean(to)) throw new Error('exactly one of SRC and DST must be VM:/path');
      if (to) {
        const mode = o.mode ? parseInt(o.mode, 8) : src === '-' ? undefined : fs.statSync(src).mode & 0o7777;
        const body = src === '-' ? process.stdin : fs.createReadStream(src);
        const r = await client().putFile(to.vm, to.path, Readable.toWeb(body) as unknown as BodyInit, { mode, mkdirs: o.parents });
        process.stderr.write(`${r.bytes} bytes → ${dst}\n`);
        return;
      }
      const { body, mode } = await client().getFile(from!.vm, from!.path);
      if (dst === '-') await pipeline(Readable.from(body), process.stdout);
      else await pipeline(Readable.from(body), fs.createWriteStream(dst, { mode: o.mode ? parseInt(o.mode, 8) : mode }));
    });
  return [exec, cp];
}

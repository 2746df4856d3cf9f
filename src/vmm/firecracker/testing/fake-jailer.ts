// A stand-in `jailer` for driver tests: checks its command line the way jailer.md describes
// it, builds `<chroot_base>/<exec_file_name>/<id>/root`, copies the exec file there, writes
// `<exec_file_name>.pid` and runs the exec file with `--id=<id>` plus whatever followed `--`,
// with FAKE_FC_ROOT telling the fake Firecracker where its emulated `/` is. As the real one:
// the exec file and the chroot base are canonicalized first (the jail is named after the
// resolved file), the jail root is chowned to --uid/--gid, and Firecracker runs as that uid
// (really: the kernel checks every file it opens). It cannot chroot (the fake is a Node
// program that needs its modules), so the directories above the jail must be traversable.
//   FAKE_JAILER_RECORD       write the parsed argv (JSON) to this file
//   FAKE_JAILER_CGROUP_BASE  emulated cgroup hierarchy: `<base>/<parent_cgroup>/<id>` is made there
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const argv = process.argv.slice(2);
const sep = argv.indexOf('--');
const own = sep < 0 ? argv : argv.slice(0, sep);
const forwarded = sep < 0 ? [] : argv.slice(sep + 1);

function die(msg: string): never {
  process.stderr.write(`jailer: ${msg}\n`);
  process.exit(1);
}

const single: Record<string, string> = {};
const multi: Record<string, string[]> = { '--cgroup': [], '--resource-limit': [] };
const flags = new Set<string>();
const VALUED = ['--id', '--exec-file', '--uid', '--gid', '--chroot-base-dir', '--netns', '--cgroup-version', '--parent-cgroup'];
for (let i = 0; i < own.length; i++) {
  const a = own[i]!;
  if (a === '--daemonize' || a === '--new-pid-ns') flags.add(a);
  else if (a in multi) multi[a]!.push(own[++i] ?? die(`${a} needs a value`));
  else if (VALUED.includes(a)) {
    if (a in single) die(`${a} given twice`);
    single[a] = own[++i] ?? die(`${a} needs a value`);
  } else die(`unknown argument ${a}`);
}
for (const req of ['--id', '--exec-file', '--uid', '--gid']) if (!(req in single)) die(`missing required argument ${req}`);
const id = single['--id']!;
if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) die(`invalid id ${id}`);
const execFile = single['--exec-file']!;
if (!path.isAbsolute(execFile) || !fs.existsSync(execFile)) die(`exec file ${execFile} must be an existing absolute path`);
for (const n of ['--uid', '--gid']) if (!/^\d+$/.test(single[n]!)) die(`${n} must be a number`);
if (single['--cgroup-version'] && !['1', '2'].includes(single['--cgroup-version'])) die('--cgroup-version must be 1 or 2');
for (const c of multi['--cgroup']!) if (!/^[a-z_]+\.[a-z_.]+=.+$/.test(c)) die(`bad --cgroup ${c}`);
for (const r of multi['--resource-limit']!) if (!/^(fsize|no-file)=\d+$/.test(r)) die(`bad --resource-limit ${r}`);
if (single['--netns'] && !fs.existsSync(single['--netns'])) die(`netns ${single['--netns']} does not exist`);
if (forwarded.some((a) => a === '--id' || a.startsWith('--id='))) die('--id after -- : the jailer passes --id itself');

if (process.env.FAKE_JAILER_RECORD) {
  fs.writeFileSync(process.env.FAKE_JAILER_RECORD, JSON.stringify({ argv, single, multi, flags: [...flags], forwarded }));
}

const execName = path.basename(fs.realpathSync(execFile));
if (!execName.includes('firecracker')) die(`Invalid filename. The filename of \`--exec-file\` option must contain "firecracker": ${execName}`);
const base = single['--chroot-base-dir'] ?? '/srv/jailer';
if (!fs.existsSync(base)) die(`chroot base ${base} does not exist`);
const root = path.join(fs.realpathSync(base), execName, id, 'root');
fs.mkdirSync(root, { recursive: true });
fs.copyFileSync(execFile, path.join(root, execName));
fs.chmodSync(path.join(root, execName), 0o755);
const uid = Number(single['--uid']);
const gid = Number(single['--gid']);
fs.chownSync(root, uid, gid);
if (process.env.FAKE_JAILER_CGROUP_BASE) {
  fs.mkdirSync(path.join(process.env.FAKE_JAILER_CGROUP_BASE, single['--parent-cgroup'] ?? execName, id), { recursive: true });
}

const forks = flags.has('--new-pid-ns') || flags.has('--daemonize');
const child = spawn(path.join(root, execName), [`--id=${id}`, '--start-time-us=0', '--start-time-cpu-us=0', ...forwarded], {
  cwd: root,
  env: { ...process.env, FAKE_FC_ROOT: root },
  uid,
  gid,
  stdio: flags.has('--daemonize') ? 'ignore' : 'inherit',
  detached: forks,
});
fs.writeFileSync(path.join(root, `${execName}.pid`), `${child.pid}\n`);
if (forks) {
  child.unref();
  process.exit(0);
}
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 + 9 : 1)));
for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => child.kill(s));

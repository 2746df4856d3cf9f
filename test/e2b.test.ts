// kiln as an E2B server (issue #15, acceptance 1 and 2): the official `e2b` SDK, unmodified
// and configured only by E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY / E2B_DOMAIN, against a
// real kilnd whose sandboxes are template clones (real VMs). Every assertion checks what the
// SDK returned; errors are checked by the SDK's own classes.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AuthenticationError, CommandExitError, FileNotFoundError, NotFoundError, Sandbox, SandboxError, type FilesystemEvent } from 'e2b';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { runKiln } from './helpers/kiln-cli.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

// Sandboxes are snapshot clones: QEMU here (Firecracker clones need its jailer).
const skip = BACKEND_SKIP || (process.env.KILN_BACKEND === 'firecracker' ? 'KILN_BACKEND=firecracker: sandbox clones are exercised on QEMU' : false);
const DOMAIN = 'kiln.test';

let d: TestDaemon;
let e2bUrl: string;
let apiKey: string;

before(async () => {
  if (skip) return;
  d = await startKilnd({ backend: 'qemu', serveArgs: ['--e2b-listen', '127.0.0.1:0', '--e2b-domain', DOMAIN] });
  e2bUrl = /kiln e2b server on (http:\/\/\S+)/.exec(d.output())![1]!;
  apiKey = (await fs.readFile(path.join(d.stateDir, 'e2b-api-key'), 'utf8')).trim();
  // Exactly what a user sets: the SDK reads these itself.
  process.env.E2B_API_URL = e2bUrl;
  process.env.E2B_SANDBOX_URL = e2bUrl;
  process.env.E2B_API_KEY = apiKey;
  process.env.E2B_DOMAIN = DOMAIN;
});
after(() => d?.dispose());

/** An HTTP GET addressed like a wildcard DNS name would deliver it: Host = sandbox.getHost(port). */
function getViaHost(host: string, urlPath: string): Promise<{ status: number; body: string }> {
  const u = new URL(e2bUrl);
  return new Promise((resolve, reject) => {
    const req = http.get({ host: u.hostname, port: Number(u.port), path: urlPath, headers: { host }, timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

describe('e2b SDK against kilnd', { skip }, () => {
  let sbx: Sandbox;

  before(async () => {
    sbx = await Sandbox.create('base', { metadata: { suite: 'e2b-test', run: String(process.pid) }, envs: { FROM_CREATE: 'created' } });
  });
  after(() => sbx?.kill().catch(() => {}));

  test('Sandbox.create gives a running sandbox whose info the API reports', async () => {
    assert.match(sbx.sandboxId, /^[a-z0-9]{20}$/);
    const info = await Sandbox.getInfo(sbx.sandboxId);
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'e2b-test', run: String(process.pid) });
    assert.ok(info.endAt.getTime() > Date.now());
    assert.equal(await sbx.isRunning(), true);
    const [m] = await sbx.getMetrics();
    assert.ok(m, 'one metrics sample');
    assert.equal(m.cpuCount, 1);
    assert.ok(m.memTotal > 400 * 1024 * 1024 && m.memUsed > 0 && m.memUsed < m.memTotal, JSON.stringify(m));
    assert.ok(m.cpuUsedPct >= 0 && m.cpuUsedPct <= 100);
    // The sandbox is a kiln VM named by its id.
    assert.equal((await d.client.getVm(sbx.sandboxId)).state, 'ready');
  });

  test('the sandbox is a VM labelled as one: kiln vm ls, the API\'s label filter, the events', async () => {
    const id = sbx.sandboxId;
    const info = await Sandbox.getInfo(id);
    const want = {
      'kiln.kind': 'sandbox', 'e2b.sandbox': id, 'e2b.template': 'base', 'e2b.end_at': info.endAt.toISOString(), 'e2b.on_timeout': 'kill',
      'e2b.meta.suite': 'e2b-test', 'e2b.meta.run': String(process.pid),
    };
    // The CLI as a user runs it: the table, then the JSON of the same filter.
    const table = await runKiln(d, ['vm', 'ls', '--kind', 'sandbox'], { timeoutMs: 30_000 });
    assert.equal(table.code, 0, table.stderr);
    const row = table.stdout.split('\n').find((l) => l.includes(id));
    assert.ok(row, table.stdout);
    for (const cell of ['sandbox', 'ready', `e2b.end_at=${info.endAt.toISOString()}`, 'e2b.meta.suite=e2b-test', 'e2b.template=base']) {
      assert.ok(row.includes(cell), `${cell} in:\n${table.stdout}`);
    }
    const listed = await runKiln(d, ['--json', 'vm', 'ls', '--label', `e2b.sandbox=${id}`], { timeoutMs: 30_000 });
    assert.equal(listed.code, 0, listed.stderr);
    const vms = JSON.parse(listed.stdout) as { name: string; kind: string; state: string; labels: Record<string, string> }[];
    assert.deepEqual(vms.map((v) => [v.name, v.kind, v.state]), [[id, 'sandbox', 'ready']]);
    assert.deepEqual(vms[0]!.labels, want);
    // The API's filters: metadata as a label, and kinds (the sandbox is no plain VM).
    assert.deepEqual((await d.client.listVms({ label: ['e2b.meta.suite=e2b-test', `e2b.meta.run=${process.pid}`] })).map((v) => v.name), [id]);
    assert.deepEqual(await d.client.listVms({ label: ['e2b.meta.suite=another-suite'] }), []);
    assert.ok(!(await d.client.listVms({ kind: 'vm' })).some((v) => v.name === id));
    // The events: the VM's created event says what it is, with the labels.
    const ac = new AbortController();
    const deadline = setTimeout(() => ac.abort(), 15_000);
    let created: Record<string, unknown> | undefined;
    try {
      for await (const e of d.client.events({ vm: id, since: 0, signal: ac.signal })) {
        if (e.type === 'vm.created') {
          created = e as unknown as Record<string, unknown>;
          break;
        }
      }
    } finally {
      clearTimeout(deadline);
      ac.abort();
    }
    assert.ok(created, 'a vm.created event for the sandbox');
    assert.equal(created.kind, 'sandbox');
    // Its end of life is labelled once it runs (a vm.labels event), the rest from the start.
    const { 'e2b.end_at': _end, ...atCreate } = want;
    assert.deepEqual(created.labels, atCreate);
  });

  test('metadata that cannot be kept as VM labels is refused with E2B\'s 400', async () => {
    const e = await Sandbox.create('base', { metadata: { 'not a key': 'x' } }).catch((x) => x);
    assert.ok(e instanceof SandboxError, String(e));
    assert.equal(e.statusCode, 400);
    assert.match(e.message, /metadata: label key "not a key"/);
    assert.equal((await d.client.listVms({ kind: 'sandbox' })).length, 1, 'no sandbox VM was made for it');
  });

  test('commands.run: stdout, stderr, exit code, env, cwd, user', async () => {
    const r = await sbx.commands.run('echo out; echo err >&2; echo "$FROM_CREATE $MINE"; pwd; whoami', { envs: { MINE: 'mine' } });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'out\ncreated mine\n/home/user\nuser\n');
    assert.equal(r.stderr, 'err\n');
    const root = await sbx.commands.run('whoami; pwd', { user: 'root', cwd: '/tmp' });
    assert.equal(root.stdout, 'root\n/tmp\n');
    const failed = await sbx.commands.run('echo nope >&2; exit 3').catch((e) => e);
    assert.ok(failed instanceof CommandExitError, String(failed));
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.stderr, 'nope\n');
    const sudo = await sbx.commands.run('sudo -n whoami');
    assert.equal(sudo.stdout, 'root\n');
  });

  test('a background command is listed, then killed', async () => {
    const h = await sbx.commands.run('sleep 600', { background: true });
    assert.ok(h.pid > 0);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid));
    assert.equal(await sbx.commands.kill(h.pid), true);
    const end = await h.wait().catch((e) => e);
    assert.ok(end instanceof CommandExitError, String(end));
    assert.notEqual(end.exitCode, 0);
    await until('the killed process to leave the list', async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid), 10_000);
    assert.equal(await sbx.commands.kill(h.pid), false);
  });

  test('stdin reaches a process and closing it ends the process', async () => {
    const h = await sbx.commands.run('tr a-z A-Z', { background: true, stdin: true });
    await h.sendStdin('hello ');
    await h.sendStdin('stdin\n');
    await h.closeStdin();
    const r = await h.wait();
    assert.equal(r.stdout, 'HELLO STDIN\n');
  });

  test('a PTY session: input, output, resize, exit code', async () => {
    let out = '';
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (out += Buffer.from(d).toString()) });
    const type = (s: string) => sbx.pty.sendInput(term.pid, new TextEncoder().encode(s));
    await type('stty size; tty; echo $((6*7))\n');
    await until('the shell on its terminal to answer', () => out.includes('24 80') && out.includes('/dev/pts/') && out.includes('42'), 20_000);
    await sbx.pty.resize(term.pid, { cols: 100, rows: 30 });
    await type('stty size\n');
    await until('the resized terminal', () => out.includes('30 100'), 20_000);
    await type('exit 5\n');
    const end = await term.wait().catch((e) => e);
    assert.ok(end instanceof CommandExitError, String(end));
    assert.equal(end.exitCode, 5);
  });

  test('files: write, read, list, makeDir, rename, remove, exists', async () => {
    const info = await sbx.files.write('notes/a.txt', 'first line\n');
    assert.equal(info.path, '/home/user/notes/a.txt');
    assert.equal(await sbx.files.read('/home/user/notes/a.txt'), 'first line\n');
    // Written as the sandbox's user, not root.
    assert.equal((await sbx.commands.run('stat -c %U /home/user/notes/a.txt /home/user/notes')).stdout, 'user\nuser\n');
    assert.equal(await sbx.files.makeDir('/home/user/notes/sub'), true);
    assert.equal(await sbx.files.makeDir('/home/user/notes/sub'), false);
    const listed = await sbx.files.list('/home/user/notes');
    assert.deepEqual(listed.map((e) => [e.name, e.type]).sort(), [['a.txt', 'file'], ['sub', 'dir']]);
    assert.equal(listed.find((e) => e.name === 'a.txt')!.size, 11);
    const deep = await sbx.files.list('/home/user', { depth: 2 });
    assert.ok(deep.some((e) => e.path === '/home/user/notes/a.txt'));
    const moved = await sbx.files.rename('/home/user/notes/a.txt', '/home/user/notes/sub/b.txt');
    assert.equal(moved.path, '/home/user/notes/sub/b.txt');
    assert.equal(await sbx.files.exists('/home/user/notes/a.txt'), false);
    assert.equal(await sbx.files.exists('/home/user/notes/sub/b.txt'), true);
    const bytes = Buffer.from([0, 1, 2, 250, 255]);
    await sbx.files.write('/tmp/bin.dat', new Uint8Array(bytes).buffer);
    assert.deepEqual(Buffer.from(await sbx.files.read('/tmp/bin.dat', { format: 'bytes' })), bytes);
    await sbx.files.remove('/home/user/notes');
    assert.equal(await sbx.files.exists('/home/user/notes'), false);
    await assert.rejects(sbx.files.read('/home/user/notes/sub/b.txt'), FileNotFoundError);
    // The user's permissions apply: /root is not theirs.
    await assert.rejects(sbx.files.list('/root'));
    assert.ok((await sbx.files.list('/root', { user: 'root' })).some((e) => e.name === '.bashrc'));
  });

  test('a directory watch sees a write', async () => {
    await sbx.files.makeDir('/home/user/watched');
    const seen: FilesystemEvent[] = [];
    const w = await sbx.files.watchDir('/home/user/watched', (e) => void seen.push(e));
    try {
      await sbx.files.write('/home/user/watched/new.txt', 'x');
      await until('a watch event for new.txt', () => seen.some((e) => e.name === 'new.txt' && (e.type === 'write' || e.type === 'create')), 15_000);
    } finally {
      await w.stop();
    }
  });

  test('getHost(port) reaches an HTTP server inside the sandbox', async () => {
    await sbx.files.write('/home/user/www/hello.txt', 'served from the sandbox\n');
    await sbx.commands.run('python3 -m http.server 8000 --directory /home/user/www', { background: true });
    const host = sbx.getHost(8000);
    assert.equal(host, `8000-${sbx.sandboxId}.${DOMAIN}`);
    const r = await until('the sandbox web server to answer', async () => {
      const res = await getViaHost(host, '/hello.txt').catch(() => null);
      return res?.status === 200 ? res : null;
    }, 30_000, 300);
    assert.equal(r.body, 'served from the sandbox\n');
  });

  test('Sandbox.list filters by metadata', async () => {
    const other = await Sandbox.create('base', { metadata: { suite: 'e2b-test', run: 'other' } });
    try {
      const page = await Sandbox.list({ query: { metadata: { suite: 'e2b-test', run: String(process.pid) } } }).nextItems();
      assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId]);
      const both = await Sandbox.list({ query: { metadata: { suite: 'e2b-test' } } }).nextItems();
      assert.deepEqual(both.map((s) => s.sandboxId).sort(), [sbx.sandboxId, other.sandboxId].sort());
      // Paging: one per page, the cursor in X-Next-Token.
      const pager = Sandbox.list({ query: { metadata: { suite: 'e2b-test' } }, limit: 1 });
      const first = await pager.nextItems();
      assert.equal(first.length, 1);
      assert.equal(pager.hasNext, true);
      const second = await pager.nextItems();
      assert.equal(second.length, 1);
      assert.notEqual(second[0]!.sandboxId, first[0]!.sandboxId);
      assert.equal(pager.hasNext, false);
    } finally {
      await other.kill();
    }
  });

  test('pause, then Sandbox.connect: same id, a file and a process\'s memory intact', async () => {
    await sbx.files.write('/home/user/kept.txt', 'still here');
    // The secret exists only in this process's memory.
    const h = await sbx.commands.run('secret=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d " \\n"); echo "secret $secret"; while read line; do echo "$secret $line"; done', { background: true, stdin: true });
    const secret = (await until('the secret', () => /secret ([0-9a-f]{16})/.exec(h.stdout)?.[1], 10_000))!;
    assert.equal(await sbx.pause(), true);
    assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'paused');
    // kiln's view agrees: the sandbox's VM is paused, and still a sandbox.
    const paused = await d.client.getVm(sbx.sandboxId);
    assert.deepEqual([paused.kind, paused.state], ['sandbox', 'paused']);
    assert.equal(await sbx.pause(), false);
    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 600_000 });
    assert.equal(again.sandboxId, sbx.sandboxId);
    const resumed = await Sandbox.getInfo(sbx.sandboxId);
    assert.equal(resumed.state, 'running');
    // connect moved its end of life: the label says the same as the SDK.
    const vm = await d.client.getVm(sbx.sandboxId);
    assert.equal(vm.state, 'ready');
    assert.equal(vm.labels['e2b.end_at'], resumed.endAt.toISOString());
    assert.equal(await again.files.read('/home/user/kept.txt'), 'still here');
    const h2 = await again.commands.connect(h.pid);
    await again.commands.sendStdin(h.pid, 'ping\n');
    await until('the process to answer with its secret', () => h2.stdout.includes(`${secret} ping`), 10_000);
    await again.commands.kill(h.pid);
  });

  test('setTimeout ends the sandbox when it expires', async () => {
    const short = await Sandbox.create('base', { timeoutMs: 60_000 });
    await short.setTimeout(120_000);
    const later = await Sandbox.getInfo(short.sandboxId);
    assert.equal((await d.client.getVm(short.sandboxId)).labels['e2b.end_at'], later.endAt.toISOString(), 'setTimeout moves the VM\'s label too');
    await short.setTimeout(2_000);
    const info = await Sandbox.getInfo(short.sandboxId);
    assert.ok(info.endAt.getTime() - Date.now() < 3_000);
    await until('the expired sandbox to be gone', async () => !(await short.isRunning()), 30_000, 500);
    await assert.rejects(Sandbox.getInfo(short.sandboxId), NotFoundError);
    await assert.rejects(d.client.getVm(short.sandboxId));
  });

  test('a sandbox created with onTimeout pause is paused at its end, and connect resumes it', async () => {
    const short = await Sandbox.create('base', { timeoutMs: 3_000, lifecycle: { onTimeout: 'pause' } });
    try {
      assert.equal((await Sandbox.getInfo(short.sandboxId)).lifecycle?.onTimeout, 'pause');
      await short.files.write('/tmp/mark', 'before the pause');
      await until('the sandbox to be paused by its timeout', async () => (await Sandbox.getInfo(short.sandboxId)).state === 'paused', 30_000, 500);
      const back = await Sandbox.connect(short.sandboxId, { timeoutMs: 60_000 });
      assert.equal((await Sandbox.getInfo(short.sandboxId)).state, 'running');
      assert.equal(await back.files.read('/tmp/mark'), 'before the pause');
    } finally {
      await Sandbox.kill(short.sandboxId);
    }
  });

  test('errors are the SDK\'s own classes', async () => {
    await assert.rejects(Sandbox.getInfo('inosuchsandbox000000'), NotFoundError);
    await assert.rejects(Sandbox.connect('inosuchsandbox000000'), NotFoundError);
    assert.equal(await Sandbox.kill('inosuchsandbox000000'), false);
    await assert.rejects(Sandbox.list({ apiKey: `e2b_${'0'.repeat(40)}` }).nextItems(), AuthenticationError);
    await assert.rejects(Sandbox.create('base', { apiKey: `e2b_${'0'.repeat(40)}` }), AuthenticationError);
    // A wrong envd access token: what a client holding another sandbox's token would send.
    const forged = await Sandbox.connect(sbx.sandboxId);
    (forged as unknown as { envdAccessToken: string }).envdAccessToken = 'f'.repeat(48);
    await assert.rejects(forged.commands.run('true'), AuthenticationError);
    // An unknown template: E2B's 404, which the SDK reports as a SandboxError carrying it.
    const noTemplate = await Sandbox.create('no-such-template').catch((e) => e);
    assert.ok(noTemplate instanceof SandboxError, String(noTemplate));
    assert.equal(noTemplate.statusCode, 404);
  });

  test('kill removes the sandbox and its VM', async () => {
    const id = sbx.sandboxId;
    await sbx.kill();
    await assert.rejects(Sandbox.getInfo(id), NotFoundError);
    assert.ok(!(await d.client.listVms()).some((v) => v.name === id));
    assert.equal(await sbx.isRunning(), false);
  });
});

// The deployment files in deploy/ (systemd units, Kubernetes manifests) are not applied by any
// test here (no systemd boot, no cluster), so they could rot silently when a flag or a
// variable changes. This holds them to the code they run: every `kiln serve` command line in
// them parses with the real serve command, every KILN_* variable they set is one kiln reads,
// the units pass `systemd-analyze verify`, and the manifests say what a node needs
// (privileged, the host's network, /dev/kvm, its state dir) and what the API must not have.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { advertisedE2bUrl, serveCommand } from './serve-command.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DEPLOY = path.join(ROOT, 'deploy');

/** Parses `args` with the real `kiln serve` (its action replaced): unknown or malformed flags throw. */
async function parseServe(args: string[]): Promise<Record<string, unknown>> {
  let seen: Record<string, unknown> | null = null;
  const cmd = serveCommand().exitOverride().configureOutput({ writeErr: () => {} });
  cmd.action((o: Record<string, unknown>) => {
    seen = o;
  });
  await cmd.parseAsync(args, { from: 'user' });
  assert.ok(seen, `kiln serve ${args.join(' ')} ran no action`);
  return seen;
}

/** Every KILN_* name kiln's sources mention (config, CLI, daemon): what a deployment may set. */
async function knownVariables(): Promise<Set<string>> {
  const names = new Set<string>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) for (const m of (await fs.readFile(p, 'utf8')).matchAll(/\bKILN_[A-Z0-9_]+/g)) names.add(m[0]);
    }
  };
  await walk(path.join(ROOT, 'src'));
  return names;
}

interface Unit {
  file: string;
  env: Record<string, string>;
  envFile: string | null;
  execStart: string;
}

async function readUnit(file: string): Promise<Unit> {
  const text = await fs.readFile(path.join(DEPLOY, 'systemd', file), 'utf8');
  const env: Record<string, string> = {};
  for (const m of text.matchAll(/^Environment=(\w+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return { file, env, envFile: /^EnvironmentFile=(.+)$/m.exec(text)?.[1] ?? null, execStart: /^ExecStart=(.+)$/m.exec(text)![1]! };
}

/** The example environment file the units' EnvironmentFile points at (deploy/systemd/kiln.env.example). */
async function exampleEnv(): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const line of (await fs.readFile(path.join(DEPLOY, 'systemd', 'kiln.env.example'), 'utf8')).split('\n')) {
    const m = /^(\w+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

/** A unit's ExecStart as systemd expands it (${VAR} from Environment= and the env file, %H the host name), minus `node kiln.js`. */
function serveArgs(u: Unit, fileEnv: Record<string, string>): string[] {
  const words = u.execStart.split(/\s+/).map((w) => w.replace(/\$\{(\w+)\}/g, (_m, v: string) => {
    const value = u.env[v] ?? fileEnv[v];
    assert.ok(value !== undefined, `${u.file}: ExecStart uses \${${v}}, set by neither Environment= nor the env file`);
    return value;
  }).replace(/%H/g, 'host-1'));
  assert.equal(words[0], '/usr/bin/node', `${u.file}: ExecStart runs node`);
  assert.match(words[1]!, /\/bin\/kiln\.js$/);
  return words.slice(2);
}

for (const file of ['kiln-node.service', 'kiln-api.service']) {
  test(`systemd ${file}: its kiln serve command line parses, its variables are kiln's, systemd-analyze accepts it`, async () => {
    const [u, fileEnv, known] = await Promise.all([readUnit(file), exampleEnv(), knownVariables()]);
    assert.equal(u.envFile, '/etc/kiln/kiln.env', 'the env file the install notes and the example name');
    const args = serveArgs(u, fileEnv);
    assert.equal(args[0], 'serve');
    const o = await parseServe(args.slice(1));
    assert.equal(o.role, file === 'kiln-node.service' ? 'node' : 'api');
    assert.match(String(o.store), /^postgres:\/\//, 'a cluster unit runs on the PostgreSQL store');
    for (const v of [...Object.keys(u.env), ...Object.keys(fileEnv)].filter((n) => n.startsWith('KILN_') && n !== 'KILN_HOME')) {
      assert.ok(known.has(v), `${file} sets ${v}, which kiln does not read`);
    }
    // systemd-analyze comes with systemd (scripts/setup-host.sh installs it); verify checks the unit's syntax and that its executables exist; node is in /usr/bin here.
    const { stderr } = await promisify(execFile)('systemd-analyze', ['verify', path.join(DEPLOY, 'systemd', file)]);
    assert.equal(stderr.trim(), '', `systemd-analyze verify ${file}`);
  });
}

interface Container {
  name: string;
  args: string[];
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string }; fieldRef?: unknown } }[];
  ports?: { containerPort: number; hostPort?: number }[];
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string }[];
}
interface K8sDoc {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: Record<string, unknown> & { template?: { metadata: { labels: Record<string, string> }; spec: { containers: Container[]; volumes?: { name: string; hostPath?: { path: string; type?: string } }[]; hostNetwork?: boolean } }; selector?: Record<string, unknown> };
  stringData?: Record<string, string>;
}

async function manifests(): Promise<K8sDoc[]> {
  const out: K8sDoc[] = [];
  for (const f of ['kiln-node.yaml', 'kiln-api.yaml']) {
    for (const d of parseAllDocuments(await fs.readFile(path.join(DEPLOY, 'kubernetes', f), 'utf8'))) {
      assert.deepEqual(d.errors, [], `${f} parses`);
      out.push(d.toJS() as K8sDoc);
    }
  }
  return out;
}

/** `$(NAME)` in args expands from the container's plain env values, as the kubelet does. */
function containerArgs(c: Container): string[] {
  const plain = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? `<${e.name}>`]));
  return c.args.map((a) => a.replace(/\$\((\w+)\)/g, (_m, v: string) => {
    assert.ok(v in plain, `${c.name}: args use $(${v}), which its env does not define`);
    return v === 'NODE_IP' ? '10.0.0.7' : String(plain[v]).replace(/<\w+>/, 'n1');
  }));
}

test('Kubernetes manifests: node DaemonSet and API Deployment run kiln serve as it parses, with what each role needs and no more', async () => {
  const docs = await manifests();
  const known = await knownVariables();
  const secret = docs.find((d) => d.kind === 'Secret')!;
  const ds = docs.find((d) => d.kind === 'DaemonSet' && d.metadata.name === 'kiln-node');
  const dep = docs.find((d) => d.kind === 'Deployment' && d.metadata.name === 'kiln-api');
  assert.ok(secret && ds && dep, 'a Secret, the node DaemonSet and the API Deployment');
  for (const [w, role] of [[ds!, 'node'], [dep!, 'api']] as const) {
    const c = w.spec!.template!.spec.containers[0]!;
    assert.equal(c.args[0], 'serve');
    const o = await parseServe(containerArgs(c).slice(1));
    assert.equal(o.role, role);
    for (const e of c.env ?? []) {
      if (e.name.startsWith('KILN_')) assert.ok(known.has(e.name), `${w.metadata.name} sets ${e.name}, which kiln does not read`);
      const ref = e.valueFrom?.secretKeyRef;
      if (ref) {
        assert.equal(ref.name, secret.metadata.name, `${e.name} reads the kiln Secret`);
        assert.ok(ref.key in (secret.stringData ?? {}), `the Secret has the key ${ref.key} (${e.name})`);
      }
    }
    assert.ok((c.env ?? []).some((e) => e.name === 'KILN_STORE'), `${role}: the store comes from the Secret`);
    assert.ok((c.env ?? []).some((e) => e.name === 'KILN_API_TOKEN'), `${role}: the cluster's one API token`);
    const labels = w.spec!.template!.metadata.labels;
    assert.deepEqual((w.spec!.selector as { matchLabels: Record<string, string> }).matchLabels, labels, `${w.metadata.name}: the selector matches its pods`);
    const svc = docs.filter((d) => d.kind === 'Service' && Object.entries((d.spec!.selector ?? {}) as Record<string, string>).every(([k, v]) => labels[k] === v));
    assert.ok(svc.length > 0, `a Service selects the ${role} pods`);
    for (const s of svc) for (const p of (s.spec!.ports as { targetPort: number }[])) assert.ok(c.ports?.some((cp) => cp.containerPort === p.targetPort), `${s.metadata.name} targets a port the ${role} container listens on`);
  }
  // The node makes bridges, taps, namespaces and nftables rules on its host and starts VMMs.
  const node = ds!.spec!.template!.spec;
  const nc = node.containers[0]!;
  assert.equal(nc.securityContext?.privileged, true);
  assert.equal(node.hostNetwork, true, 'VMs are addressed on the host\'s bridge');
  const hostPath = (mount: string) => {
    const m = nc.volumeMounts?.find((v) => v.mountPath === mount);
    return m && node.volumes?.find((v) => v.name === m.name)?.hostPath;
  };
  assert.deepEqual(hostPath('/dev/kvm'), { path: '/dev/kvm', type: 'CharDevice' });
  assert.equal(hostPath('/var/lib/kiln')?.path, '/var/lib/kiln', 'the state dir outlives the pod (VMs are re-attached)');
  assert.equal(hostPath('/run/netns')?.path, '/run/netns', 'clone namespaces are the host\'s');
  const nodeOpts = await parseServe(containerArgs(nc).slice(1));
  assert.equal(nodeOpts.stateDir, '/var/lib/kiln');
  assert.match(String(nodeOpts.advertiseUrl), /^http:\/\/10\.0\.0\.7:18080$/, 'the node advertises its host address');
  // E2B: each node's listener, registered at its host address; the API serves E2B's API on the Service.
  assert.equal(nodeOpts.e2bListen, '0.0.0.0:3000');
  assert.equal(advertisedE2bUrl('http://0.0.0.0:3000', String(nodeOpts.advertiseUrl)), 'http://10.0.0.7:3000');
  assert.ok(nc.ports?.some((p) => p.containerPort === 3000 && p.hostPort === 3000), 'the node\'s E2B port is on its host');
  const apiOpts = await parseServe(containerArgs(dep!.spec!.template!.spec.containers[0]!).slice(1));
  assert.equal(apiOpts.e2bListen, '0.0.0.0:3000');
  const apiSvc = docs.find((d) => d.kind === 'Service' && d.metadata.name === 'kiln-api')!;
  assert.ok((apiSvc.spec!.ports as { port: number }[]).some((p) => p.port === 3000), 'the API Service exposes E2B\'s API');
  // The API runs no VMM: nothing privileged, no host paths.
  const api = dep!.spec!.template!.spec;
  assert.notEqual(api.containers[0]!.securityContext?.privileged, true);
  assert.equal(api.containers[0]!.securityContext?.allowPrivilegeEscalation, false);
  assert.ok(!(api.volumes ?? []).some((v) => v.hostPath), 'the API mounts nothing of the host');
});

test('the image the manifests run starts kiln\'s CLI from the checkout it copies', async () => {
  const text = await fs.readFile(path.join(DEPLOY, 'kubernetes', 'Dockerfile'), 'utf8');
  const entry = /^ENTRYPOINT (\[.*\])$/m.exec(text);
  assert.ok(entry, 'an exec-form ENTRYPOINT');
  const [bin, script] = JSON.parse(entry[1]!) as string[];
  assert.equal(bin, 'node');
  const workdir = /^WORKDIR (.+)$/m.exec(text)![1]!;
  assert.ok(script!.startsWith(`${workdir}/`), 'the entry point is in the copied checkout');
  await fs.access(path.join(ROOT, path.relative(workdir, script!)));
  assert.match(text, /npm ci --omit=dev/, 'runtime dependencies only');
  const pkg = JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  assert.ok('tsx' in pkg.dependencies, 'bin/kiln.js loads the sources through tsx, so tsx is a runtime dependency');
});

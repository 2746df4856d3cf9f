// A stand-in `firecracker` executable for driver tests: parses Firecracker's command line,
// serves the stand-in API on --api-sock, acts as the guest's serial console on stdio, and can
// misbehave on request. Launched through a bash wrapper (see fake-binaries.ts).
//
// Environment:
//   FAKE_FC_MODE     serve (default) | exit-early | no-socket | die-on
//   FAKE_FC_DIE_ON   "METHOD /path-prefix": in die-on mode, exit 1 when such a request arrives
//   FAKE_FC_VERSION  reported version (default 1.13.1)
//   FAKE_FC_SPEC     Swagger file: validate every request against it
//   FAKE_FC_RECORD   append every request (JSON lines) to this file
//   FAKE_FC_ROOT     emulated jail root (set by the fake jailer)
//   FAKE_FC_GUEST_ECHO_PORTS  comma-separated guest vsock ports that echo
// Console input (stdin) lines: "echo <text>", "dial <port> <text>", "poweroff" (kiln-init's
// shutdown: its @kiln:poweroff marker, then a reset), "panic" (a kernel panic with panic=1:
// a reset without the marker). Firecracker exits 0 on every guest reset, so both exit 0.
// SendCtrlAltDel is kiln-init's shutdown signal: marker, reset, exit 0.
// --log-path/--level/--metrics-path as Firecracker takes them (the files must exist and be
// writable by the process); without --log-path its log lines go to stdout, the serial console.
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { StandInFirecracker } from './stand-in.ts';
import { loadSpec } from './spec-validator.ts';

const args = process.argv.slice(2);
function arg(name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name) return args[i + 1];
    if (args[i]!.startsWith(`${name}=`)) return args[i]!.slice(name.length + 1);
  }
  return undefined;
}

const version = process.env.FAKE_FC_VERSION ?? '1.13.1';
if (args.includes('--version')) {
  process.stdout.write(`Firecracker v${version}\n\nSupported snapshot data format versions: 5.0.0\n`);
  process.exit(0);
}

// --no-api --config-file: the whole VM from a file (getting-started.md), as the KVM probe runs it.
//   FAKE_FC_GUEST=hang  the guest never reaches kiln-init (KVM hanging, as under nested PVM)
if (args.includes('--no-api')) {
  const file = arg('--config-file');
  if (!file) {
    process.stderr.write('Error: --no-api needs --config-file\n');
    process.exit(1);
  }
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, any>;
  const spec = process.env.FAKE_FC_SPEC ? await loadSpec(process.env.FAKE_FC_SPEC, { validateDefinition: false }) : undefined;
  const problems = [
    ...(spec?.validateRequest('PUT', '/boot-source', cfg['boot-source']) ?? []),
    ...(spec?.validateRequest('PUT', '/machine-config', cfg['machine-config']) ?? []),
  ];
  for (const p of [cfg['boot-source']?.kernel_image_path, cfg['boot-source']?.initrd_path].filter(Boolean)) {
    if (!fs.existsSync(p)) problems.push(`${p}: No such file or directory (os error 2)`);
  }
  if (problems.length) {
    process.stderr.write(`Error: invalid config file: ${problems.join('; ')}\n`);
    process.exit(1);
  }
  process.stdout.write('[    0.000000] Linux version 6.1.0-fake (probe)\n');
  if (process.env.FAKE_FC_GUEST === 'hang') setInterval(() => {}, 1 << 30);
  else {
    // kiln-init: no config drive, so it reports that and powers off (a reset: Firecracker exits 0).
    process.stdout.write('@kiln:boot uptime_ms=120\n@kiln:error stage=config errno=2 msg=no config drive\n@kiln:poweroff\n', () => process.exit(0));
  }
} else {
  await serveApi();
}

async function serveApi(): Promise<void> {
  const mode = process.env.FAKE_FC_MODE ?? 'serve';
  const id = arg('--id') ?? 'anonymous-instance';
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) {
    process.stderr.write(`Invalid instance ID: ${id}\n`);
    process.exit(1);
  }
  const apiSockArg = arg('--api-sock') ?? '/run/firecracker.socket';
  const root = process.env.FAKE_FC_ROOT;
  const inRoot = (p: string) => (root ? path.join(root, path.resolve('/', p)) : p);
  const apiSock = inRoot(apiSockArg);
  const logPath = arg('--log-path');
  const metricsPath = arg('--metrics-path');
  for (const [flag, p] of [['--log-path', logPath], ['--metrics-path', metricsPath]] as const) {
    if (p === undefined) continue;
    try {
      // Firecracker opens them without O_CREAT: they must exist, writable by its uid.
      fs.closeSync(fs.openSync(inRoot(p), 'r+'));
    } catch (e) {
      process.stderr.write(`Error: ${flag} ${p}: ${(e as Error).message}\n`);
      process.exit(1);
    }
  }
  const level = arg('--level');
  if (level !== undefined && !/^(off|error|warn|warning|info|debug|trace)$/i.test(level)) {
    process.stderr.write(`Error: invalid --level ${level}\n`);
    process.exit(1);
  }

  if (mode === 'exit-early') {
    process.stderr.write('Error: failed to open /dev/kvm: No such file or directory (os error 2)\n');
    process.exit(3);
  }
  if (mode === 'no-socket') {
    setInterval(() => {}, 1 << 30);
  } else {
    const spec = process.env.FAKE_FC_SPEC ? await loadSpec(process.env.FAKE_FC_SPEC, { validateDefinition: false }) : undefined;
    const record = process.env.FAKE_FC_RECORD;
    const dieOn = mode === 'die-on' ? process.env.FAKE_FC_DIE_ON : undefined;
    let standIn!: StandInFirecracker;
    const exit = (code: number) => {
      if (code === 0) standIn.log('Firecracker exiting successfully. exit_code=0', 'Info');
      else standIn.log(`Firecracker exiting with error. exit_code=${code}`, 'Error');
      fs.rmSync(apiSock, { force: true });
      process.exit(code);
    };
    standIn = new StandInFirecracker({
      socketPath: apiSock,
      version,
      spec,
      instanceId: id,
      root,
      ...(logPath ? { logger: { log_path: logPath, level: level ?? 'Info' } } : {}),
      ...(metricsPath ? { metricsPath } : {}),
      onFatal: () => exit(1),
      // kiln-init shuts down on Ctrl+Alt+Del (SIGINT to PID 1): its marker, then a reset.
      onCtrlAltDel: () => setTimeout(() => powerOff(), 10),
      onInstanceStart: () => process.stdout.write(`[    0.000000] Linux version 6.1.0-fake (stand-in guest of ${id})\n`),
      onRequest: (r) => {
        if (record) fs.appendFileSync(record, `${JSON.stringify(r)}\n`);
      },
      beforeDispatch: (method, url) => {
        // A VMM crashing mid-configuration: gone before it answers.
        const [m, prefix] = (dieOn ?? '').split(' ');
        if (dieOn && method === m && url.startsWith(prefix!)) {
          process.stderr.write(`thread 'fc_api' panicked at stand-in: dying on ${method} ${url}\n`);
          process.exit(1);
        }
      },
    });
    // Firecracker logs its start at Info: on the console when no logger is set yet.
    standIn.log(`Running Firecracker v${version}`, 'Info');
    const powerOff = () => {
      process.stdout.write('@kiln:poweroff\n', () => exit(0));
    };
    await standIn.listen();
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const [cmd, ...rest] = line.trim().split(' ');
      if (cmd === 'echo') process.stdout.write(`${rest.join(' ')}\n`);
      else if (cmd === 'poweroff') powerOff();
      else if (cmd === 'panic') process.stdout.write('Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\nRebooting in 1 seconds..\n', () => exit(0));
      else if (cmd === 'dial') {
        standIn.guestDial(Number(rest[0])).then(
          (s) => s.end(`${rest.slice(1).join(' ')}\n`),
          (e: Error) => process.stdout.write(`dial failed: ${e.message}\n`),
        );
      }
    });
    for (const port of (process.env.FAKE_FC_GUEST_ECHO_PORTS ?? '').split(',').filter(Boolean)) {
      standIn.guestListen(Number(port), (s) => s.pipe(s));
    }
    process.on('SIGTERM', () => exit(143));
  }
}

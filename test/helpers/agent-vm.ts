// A real QEMU microVM with a NIC on a bridge and tap this helper creates (random names,
// removed by close()), booted from kiln's own initramfs and a busybox squashfs, with the
// agent keys in its config drive. Tests the guest agent end to end without kilnd's
// networking; nothing leaves the private bridge.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { encodeConfigDrive, type GuestAgentConfig } from '../../src/guest/config-drive.ts';
import { buildBusyboxTree } from '../../src/image/default-image.ts';
import { guestNetArgs } from '../../src/net/network-manager.ts';
import { mksquashfs } from '../../src/tools/mksquashfs.ts';
import { QEMU_BINARY } from '../../src/tools/qemu-system.ts';
import { run } from '../../src/util/process.ts';
import { prepareGuestAssets } from '../../src/vm/guest-assets.ts';
import { decideAccelerator } from '../../src/vmm/accel-probe.ts';
import { kernelCmdline, qemuArgs } from '../../src/vmm/qemu/qemu-args.ts';
import { TEST_ASSETS_DIR } from './kilnd.ts';

export interface AgentVm {
  ip: string;
  hostIp: string;
  token: string;
  bridge: string;
  tap: string;
  proc: ChildProcess;
  console: () => string;
  exited: Promise<number | null>;
  close(): Promise<void>;
}

async function ip(...args: string[]): Promise<void> {
  await run('ip', args);
}

/** The busybox squashfs, built once per test process and shared by its VMs; removed when the process exits. */
let rootImage: Promise<string> | undefined;
function busyboxRoot(): Promise<string> {
  rootImage ??= (async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-agent-root-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const tree = path.join(dir, 'tree');
    await buildBusyboxTree(tree);
    const out = path.join(dir, 'root.squashfs');
    await mksquashfs(tree, out, { compression: 'lz4' });
    return out;
  })();
  return rootImage;
}

export async function bootAgentVm(opts: {
  argv?: string[];
  /** Override what the config drive tells the agent (e.g. a bad push target). */
  agent?: (defaults: GuestAgentConfig) => GuestAgentConfig;
  hostPort: number;
  subnet: { prefix: string; hostIp: string; guestIp: string };
  bridge?: string;
  extraDrives?: { path: string; serial: string; readOnly: boolean }[];
  mounts?: { serial: string; index: number; target: string; readOnly: boolean }[];
}): Promise<AgentVm> {
  const assets = await prepareGuestAssets(TEST_ASSETS_DIR, () => {});
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-agent-vm-'));
  const root = await busyboxRoot();
  const suffix = randomBytes(3).toString('hex');
  const bridge = opts.bridge ?? `kab${suffix}`;
  const tap = `kat${suffix}`;
  const token = randomBytes(32).toString('hex');
  const { hostIp, guestIp } = opts.subnet;
  const undo: (() => Promise<unknown>)[] = [];
  const cleanup = async () => {
    for (const u of undo.reverse()) await u().catch(() => {});
    await fs.rm(work, { recursive: true, force: true });
  };
  try {
    if (!opts.bridge) {
      await ip('link', 'add', bridge, 'type', 'bridge');
      undo.push(() => ip('link', 'del', bridge));
      await ip('addr', 'add', `${hostIp}/24`, 'dev', bridge);
      await ip('link', 'set', bridge, 'up');
    }
    await ip('tuntap', 'add', 'dev', tap, 'mode', 'tap');
    undo.push(() => ip('link', 'del', tap));
    await ip('link', 'set', tap, 'master', bridge);
    await ip('link', 'set', tap, 'up');

    const agentDefaults: GuestAgentConfig = { token, host: `${hostIp}:${opts.hostPort}`, port: 10240 };
    const drives = [{ id: 'root', path: root, readOnly: true }, { id: 'config', path: path.join(work, 'config.img'), readOnly: true }];
    for (const d of opts.extraDrives ?? []) drives.push({ id: d.serial, path: d.path, readOnly: d.readOnly });
    await fs.writeFile(
      drives[1]!.path,
      encodeConfigDrive({
        argv: opts.argv ?? ['/bin/sh', '-c', 'echo workload up; exec sleep 100000'],
        env: {},
        hostname: 'agentvm',
        drives: [{ role: 'root', serial: 'root', index: 0 }],
        mounts: opts.mounts,
        agent: opts.agent ? opts.agent(agentDefaults) : agentDefaults,
      }),
    );
    const { accelerator } = await decideAccelerator({
      requested: 'auto',
      kernel: assets.kernel.path,
      initrd: assets.initramfs.path,
      cacheDir: TEST_ASSETS_DIR,
    });
    const mac = `02:${randomBytes(5).toString('hex').match(/../g)!.join(':')}`;
    const args = qemuArgs(
      {
        id: `agent-${suffix}`,
        runtimeDir: work,
        accelerator,
        vcpus: 1,
        memoryMib: 256,
        kernel: {
          path: assets.kernel.path,
          initrd: assets.initramfs.path,
          cmdline: kernelCmdline(accelerator, guestNetArgs({ ip: guestIp, prefix: 24, gateway: hostIp })),
        },
        drives: drives.map((d) => ({ id: d.id, path: d.path, readOnly: d.readOnly })),
      } as Parameters<typeof qemuArgs>[0],
      { daemonize: false },
    );
    args.push('-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '-device', `virtio-net-device,netdev=n0,mac=${mac}`);
    const proc = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (b) => (stderr += b));
    const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
    undo.push(async () => {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
    });
    return {
      ip: guestIp,
      hostIp,
      token,
      bridge,
      tap,
      proc,
      exited,
      console: () => {
        try {
          return readFileSync(path.join(work, 'console.log'), 'utf8') + stderr;
        } catch {
          return stderr;
        }
      },
      close: cleanup,
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** A /24 no host interface uses yet. */
export async function freeSubnet(): Promise<{ prefix: string; hostIp: string; guestIp: string }> {
  const { stdout } = await run('ip', ['-4', '-o', 'addr']);
  for (;;) {
    const n = 16 + Math.floor(Math.random() * 200);
    const prefix = `10.231.${n}`;
    if (!stdout.includes(` ${prefix}.`)) return { prefix, hostIp: `${prefix}.1`, guestIp: `${prefix}.2` };
  }
}

// The per-VM config drive: a tiny raw block device kiln-init reads at boot (argv, env,
// hostname, which drive is which). A drive rather than the kernel command line because the
// command line is limited to 2 KiB and readable by every guest process via /proc/cmdline.
import { KilnError } from '../errors.ts';

export const CONFIG_MAGIC = 'KILNCFG1\n';
export const CONFIG_MAX_BYTES = 1024 * 1024;
const SECTOR = 4096;

export interface GuestConfig {
  argv: string[];
  env: Record<string, string>;
  cwd?: string;
  hostname?: string;
  uid?: number;
  gid?: number;
  /** "name|uid[:group|gid]": kiln-init resolves it against the image's /etc/passwd and /etc/group. */
  user?: string;
  /** 'tagged': workload output framed per stream on the console (container logs). */
  stdio?: 'tagged';
  stopGraceMs?: number;
  drives: { role: 'root' | 'scratch'; serial: string; index: number }[];
  /** Extra drives (volumes) mounted inside the root before the workload starts. */
  mounts?: { serial: string; index: number; target: string; readOnly: boolean }[];
  agent?: GuestAgentConfig;
  /** A classic VM: kiln-init mounts the root drive read-write and hands PID 1 to its init. */
  classic?: GuestClassicConfig;
}

/** First-boot identity of a classic VM (src/guest/kiln-init/classic.c). */
export interface GuestClassicConfig {
  /** First boot is per instance id (the VM id): its identity is written once per instance. */
  instanceId: string;
  sshAuthorizedKeys: string[];
  userData?: string;
}

/** The guest agent's side of docs/agent-protocol.md. */
export interface GuestAgentConfig {
  /** Lowercase hex; authenticates both directions. */
  token: string;
  /** `<ipv4>:<port>` the agent pushes hello/exit to over TCP; absent: no push over TCP. */
  host?: string;
  /** Guest TCP port for sessions (kiln-init's default: 10240). */
  port?: number;
  /** Use vsock instead of TCP: sessions on this guest port, push to this host port (CID 2). */
  vsockPort?: number;
}

export function encodeConfigDrive(cfg: GuestConfig): Buffer {
  if (cfg.argv.length === 0) throw new KilnError('KILN_ERR_VALIDATION', 'the command to run is empty');
  const entries: string[] = [];
  for (const a of cfg.argv) entries.push(`argv=${a}`);
  for (const [k, v] of Object.entries(cfg.env)) entries.push(`env=${k}=${v}`);
  if (cfg.cwd) entries.push(`cwd=${cfg.cwd}`);
  if (cfg.hostname) entries.push(`hostname=${cfg.hostname}`);
  if (cfg.uid !== undefined) entries.push(`uid=${cfg.uid}`);
  if (cfg.gid !== undefined) entries.push(`gid=${cfg.gid}`);
  if (cfg.user !== undefined) entries.push(`user=${cfg.user}`);
  if (cfg.stdio !== undefined) entries.push(`stdio=${cfg.stdio}`);
  if (cfg.stopGraceMs !== undefined) entries.push(`stop_grace_ms=${cfg.stopGraceMs}`);
  for (const d of cfg.drives) entries.push(`drive=${d.role},${d.serial},${d.index}`);
  for (const m of cfg.mounts ?? []) {
    if (m.serial.includes(',') || m.target.includes(',') || !m.target.startsWith('/')) {
      throw new KilnError('KILN_ERR_VALIDATION', `mount target must be an absolute path without commas: ${m.target}`);
    }
    entries.push(`mount=${m.serial},${m.index},${m.target},${m.readOnly ? 'ro' : 'rw'}`);
  }
  if (cfg.agent) {
    const a = cfg.agent;
    if (!/^[0-9a-f]{16,128}$/.test(a.token)) throw new KilnError('KILN_ERR_VALIDATION', 'agent token must be 16-128 lowercase hex digits');
    entries.push(`agent_token=${a.token}`);
    if (a.host !== undefined) {
      if (!/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/.test(a.host)) throw new KilnError('KILN_ERR_VALIDATION', `agent host must be <ipv4>:<port>: ${a.host}`);
      entries.push(`agent_host=${a.host}`);
    }
    if (a.port !== undefined) entries.push(`agent_port=${a.port}`);
    if (a.vsockPort !== undefined) entries.push(`agent_vsock_port=${a.vsockPort}`);
  }
  if (cfg.classic) {
    const c = cfg.classic;
    entries.push('mode=classic', `instance_id=${c.instanceId}`);
    for (const k of c.sshAuthorizedKeys) {
      if (/[\r\n]/.test(k)) throw new KilnError('KILN_ERR_VALIDATION', 'an SSH key cannot span lines');
      entries.push(`ssh_key=${k}`);
    }
    if (c.userData !== undefined) entries.push(`user_data=${c.userData}`);
  }
  for (const e of entries) {
    if (e.includes('\0')) throw new KilnError('KILN_ERR_VALIDATION', 'strings passed to the guest cannot contain NUL bytes');
  }
  const body = Buffer.from(CONFIG_MAGIC + entries.map((e) => `${e}\0`).join('') + '\0', 'utf8');
  if (body.length > CONFIG_MAX_BYTES) {
    throw new KilnError('KILN_ERR_VALIDATION', `guest configuration is ${body.length} bytes; the limit is ${CONFIG_MAX_BYTES}`);
  }
  const out = Buffer.alloc(Math.ceil(body.length / SECTOR) * SECTOR);
  body.copy(out);
  return out;
}

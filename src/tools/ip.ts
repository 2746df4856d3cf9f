// iproute2 (`ip`): links, addresses, bridge ports and the neighbour table. JSON output
// (`ip -j`) everywhere kiln reads, so nothing parses iproute2's human format.
import { run, streamLines } from '../util/process.ts';

export interface LinkInfo {
  ifname: string;
  /** Bridge the link is enslaved to, if any. */
  master?: string;
  operstate?: string;
  address?: string;
  linkinfo?: { info_kind?: string };
}

export interface AddrInfo {
  ifname: string;
  addr_info: { family: string; local: string; prefixlen: number }[];
}

export interface NeighInfo {
  dst: string;
  dev?: string;
  lladdr?: string;
  state?: string[];
}

export interface RouteInfo {
  dst: string;
  dev?: string;
}

const ip = (args: string[]) => run('ip', args);

async function json<T>(args: string[]): Promise<T> {
  const { stdout } = await run('ip', ['-j', ...args]);
  return (stdout.trim() ? JSON.parse(stdout) : []) as T;
}

export async function listLinks(opts: { master?: string; type?: string } = {}): Promise<LinkInfo[]> {
  const args = ['-d', 'link', 'show'];
  if (opts.master) args.push('master', opts.master);
  if (opts.type) args.push('type', opts.type);
  return json<LinkInfo[]>(args);
}

export async function linkExists(name: string): Promise<boolean> {
  const links = await json<LinkInfo[]>(['link', 'show']);
  return links.some((l) => l.ifname === name);
}

export const addBridge = (name: string) => ip(['link', 'add', 'name', name, 'type', 'bridge']);
/** A persistent tap owned by root: the VMM opens it by name, so it outlives any one VMM. */
export const addTap = (name: string) => ip(['tuntap', 'add', 'dev', name, 'mode', 'tap']);
export const deleteLink = (name: string) => ip(['link', 'del', 'dev', name]);
export const setLinkUp = (name: string) => ip(['link', 'set', 'dev', name, 'up']);
export const setMaster = (name: string, bridge: string) => ip(['link', 'set', 'dev', name, 'master', bridge]);
/** Isolated bridge ports cannot talk to each other, only to non-isolated ones (the host). */
export const setPortIsolated = (name: string) => ip(['link', 'set', 'dev', name, 'type', 'bridge_slave', 'isolated', 'on']);
export const addAddress = (name: string, cidr: string) => ip(['addr', 'replace', cidr, 'dev', name]);

/**
 * Runs several `ip` commands in one process (`ip -batch -`): a tap costs one spawn instead of
 * five. Stops at the first failing command; the error names it.
 */
export async function ipBatch(commands: readonly string[][]): Promise<void> {
  await run('ip', ['-batch', '-'], { input: commands.map((c) => c.join(' ')).join('\n') + '\n' });
}

/**
 * Who may open a tap besides root: an unprivileged VMM (Firecracker under its jailer) needs
 * the tap to be its uid's or group's, or TUNSETIFF fails without CAP_NET_ADMIN. Set when the
 * tap is made: an existing tap's owner cannot be changed.
 */
export interface TapOwner {
  uid: number;
  gid: number;
}

/** `ip tuntap add` for `tap`, owned by `owner` when given. */
export function tuntapAddCommand(tap: string, owner?: TapOwner): string[] {
  return ['tuntap', 'add', 'dev', tap, 'mode', 'tap', ...(owner ? ['user', String(owner.uid), 'group', String(owner.gid)] : [])];
}

/** Creates a tap enslaved to `bridge`, isolated from the other ports, and up: one spawn. */
export function tapOnBridgeCommands(tap: string, bridge: string, owner?: TapOwner): string[][] {
  return [
    tuntapAddCommand(tap, owner),
    ['link', 'set', 'dev', tap, 'master', bridge],
    ['link', 'set', 'dev', tap, 'type', 'bridge_slave', 'isolated', 'on'],
    ['link', 'set', 'dev', tap, 'up'],
  ];
}

export const listAddresses = (name?: string) => json<AddrInfo[]>(['-4', 'addr', 'show', ...(name ? ['dev', name] : [])]);
export const listRoutes = () => json<RouteInfo[]>(['-4', 'route', 'show']);
export const listNeighbours = (dev: string) => json<NeighInfo[]>(['-4', 'neigh', 'show', 'dev', dev]);

export interface NeighbourEvent {
  ip: string;
  mac: string | null;
  state: string;
}

/**
 * Follows neighbour-table changes on `dev` (`ip monitor neigh`): the host learns a guest's
 * MAC the moment the guest's gratuitous ARP or first packet arrives, without polling.
 */
export function monitorNeighbours(dev: string, onEvent: (e: NeighbourEvent) => void) {
  return streamLines('ip', ['-4', 'monitor', 'neigh', 'dev', dev], (line) => {
    const e = parseNeighbourLine(line);
    if (e) onEvent(e);
  });
}

/** `10.0.0.2 lladdr 02:6b:0a:00:00:02 REACHABLE` (dev omitted when filtered by dev), `Deleted …` lines ignored. */
export function parseNeighbourLine(line: string): NeighbourEvent | null {
  const m = /^(\d+\.\d+\.\d+\.\d+)(?: dev \S+)?(?: lladdr ([0-9a-f:]{17}))?(?: \w+)* ([A-Z_]+)$/.exec(line.trim());
  if (!m || line.startsWith('Deleted')) return null;
  return { ip: m[1]!, mac: m[2] ?? null, state: m[3]! };
}

/** Forgets what the host knew about `addr` (a reused lease must not look reachable already). */
export const flushNeighbour = (addr: string, dev: string) => ip(['-4', 'neigh', 'flush', 'to', addr, 'dev', dev]);

// ---- network namespaces (clones: src/net/clone-netns.ts) -----------------------------------

export const deleteNetns = (name: string) => ip(['netns', 'del', name]);
export async function listNetns(): Promise<string[]> {
  return (await json<{ name: string }[]>(['netns', 'list'])).map((n) => n.name);
}
/** `ip -batch` inside a namespace (`ip -n <ns>`): one spawn for a namespace's links and routes. */
export async function ipBatchIn(ns: string, commands: readonly string[][]): Promise<void> {
  await run('ip', ['-n', ns, '-batch', '-'], { input: commands.map((c) => c.join(' ')).join('\n') + '\n' });
}

// kiln's host networking: one bridge (the VMs' gateway), one tap per running VM, addresses
// leased in the store, and one nftables table rendered from the store. Everything kiln adds
// to the host carries kiln's names (the bridge, `kiln<vm>` taps, the `kiln_<bridge>` table),
// so a start-up sweep can tell its leftovers from anything else on the host.
import fs from 'node:fs/promises';
import net from 'node:net';
import dgram from 'node:dgram';
import type { Logger } from 'pino';
import type { NetworkConfig } from '../config.ts';
import { KilnError } from '../errors.ts';
import type { Store, VmRecord, VmState } from '../store/store.ts';
import * as ip from '../tools/ip.ts';
import { nftApply, nftDeleteTable } from '../tools/nft.ts';
import type { NicSpec } from '../vmm/driver.ts';
import { cloneNetnsName, netnsExists, removeCloneNetwork, strayCloneNamespaces } from './clone-netns.ts';
import { lowestFree, macFor, overlaps, parseSubnet, type Subnet } from './ipv4.ts';
import { NFT_FAMILY, renderRuleset, tableName, type PortPublication } from './ruleset.ts';

/** VMs in these states have a VMM, so their tap and port rules must exist. */
const PLUGGED: readonly VmState[] = ['booting', 'ready', 'paused', 'stopping'];
const TAP_PREFIX = 'kiln';

export interface VmAddress {
  ip: string;
  prefix: number;
  gateway: string;
  mac: string;
}

/** What kiln-init reads from the kernel command line to configure eth0 (no DHCP). */
export function guestNetArgs(addr: Pick<VmAddress, 'ip' | 'prefix' | 'gateway'>): string[] {
  return [`kiln.ip=${addr.ip}/${addr.prefix}`, `kiln.gw=${addr.gateway}`];
}

export function tapName(vmId: string): string {
  // vm ids are `vm-` + 10 hex digits: `kiln` + 10 = 14 characters, inside IFNAMSIZ (15).
  return `${TAP_PREFIX}${vmId.replace(/^vm-/, '')}`.slice(0, 15);
}

export class NetworkManager {
  readonly subnet: Subnet;
  readonly table: string;
  #rendering: Promise<void> = Promise.resolve();

  constructor(
    private readonly config: NetworkConfig,
    private readonly deps: { store: Store; log: Logger },
  ) {
    this.subnet = parseSubnet(config.cidr);
    this.table = tableName(config.bridge);
  }

  get bridge(): string {
    return this.config.bridge;
  }

  /** Who the taps are made for besides root (a jailed Firecracker's uid). */
  get tapOwner(): ip.TapOwner | undefined {
    return this.config.tapOwner;
  }

  /**
   * Creates (or adopts) the bridge and turns on forwarding. Idempotent. The nftables table is
   * rendered by the start-up sweep, once the store has been reconciled with what runs.
   */
  async init(): Promise<void> {
    const { bridge } = this.config;
    const gwCidr = `${this.subnet.gateway}/${this.subnet.prefix}`;
    if (!(await ip.linkExists(bridge))) {
      await this.refuseOverlap();
      await ip.addBridge(bridge);
      this.deps.log.info({ bridge, cidr: gwCidr }, 'created bridge');
    }
    await ip.addAddress(bridge, gwCidr);
    await ip.setLinkUp(bridge);
    // Forwarding for egress NAT; route_localnet so 127.0.0.1 → published port can be DNATed
    // onto the bridge (the kernel drops loopback-sourced packets on other links otherwise).
    await writeSysctl('net/ipv4/ip_forward', '1');
    await writeSysctl(`net/ipv4/conf/${bridge}/route_localnet`, '1');
    // Learn guests from their gratuitous ARP (the neighbour-table readiness fallback).
    await writeSysctl(`net/ipv4/conf/${bridge}/arp_accept`, '1');
  }

  private async refuseOverlap(): Promise<void> {
    for (const r of await ip.listRoutes()) {
      if (r.dst === 'default' || !r.dst) continue;
      const [network, prefix] = r.dst.includes('/') ? r.dst.split('/') : [r.dst, '32'];
      if (overlaps({ network: network!, prefix: Number(prefix) }, this.subnet)) {
        throw new KilnError('KILN_ERR_HOST_SETUP', `VM subnet ${this.config.cidr} overlaps the host route ${r.dst} on ${r.dev ?? '?'}; set KILN_CIDR to a free range`);
      }
    }
  }

  /** Leases the VM's address in the store; null when the subnet is full. */
  async lease(vmId: string, exclude: readonly string[] = []): Promise<VmAddress | null> {
    // `exclude`: addresses that must not be handed out though no VM holds them (a clone's
    // guest keeps its snapshot's address behind its own: the two must differ).
    const addr = await this.deps.store.assignIp(vmId, (taken) => lowestFree(this.subnet, exclude.length ? new Set([...taken, ...exclude]) : taken));
    return addr === null ? null : this.address(addr);
  }

  address(addr: string): VmAddress {
    return { ip: addr, prefix: this.subnet.prefix, gateway: this.subnet.gateway, mac: macFor(addr) };
  }

  kernelArgs(addr: VmAddress): string[] {
    return guestNetArgs(addr);
  }

  /** Creates the VM's tap on the bridge, isolated from other VMs' taps. Idempotent. */
  async plug(vm: VmRecord): Promise<NicSpec> {
    if (!vm.ip) throw new KilnError('KILN_ERR_INTERNAL', `VM ${vm.id} has no address leased`);
    const tap = tapName(vm.id);
    const bridge = this.config.bridge;
    // A reused lease must not look reachable already (neighbour-table readiness).
    const commands = [['neigh', 'flush', 'to', vm.ip, 'dev', bridge], ...ip.tapOnBridgeCommands(tap, bridge, this.config.tapOwner)];
    try {
      await ip.ipBatch(commands);
    } catch (e) {
      // Left over from a crash (or half made just now): remove and make it once more.
      if (!(await ip.linkExists(tap))) throw e;
      await ip.deleteLink(tap);
      await ip.ipBatch(commands).catch(async (again) => {
        await ip.deleteLink(tap).catch(() => {});
        throw again;
      });
    }
    return { tap, mac: macFor(vm.ip) };
  }

  async unplug(vmId: string): Promise<void> {
    const tap = tapName(vmId);
    // A restored clone's tap is the host end of its namespace's veth (src/net/clone-netns.ts).
    if (await netnsExists(cloneNetnsName(vmId))) await removeCloneNetwork(cloneNetnsName(vmId), tap);
    else if (await ip.linkExists(tap)) await ip.deleteLink(tap);
  }

  /** The bridge's current MAC: the gateway MAC guests cache (recorded in snapshots). */
  async bridgeMac(): Promise<string | null> {
    const links = await ip.listLinks().catch(() => []);
    return links.find((l) => l.ifname === this.config.bridge)?.address ?? null;
  }

  /**
   * Re-renders kiln's nftables table from the store. Serialised: concurrent callers queue,
   * and each render reads the store afresh, so the last one always reflects the latest state.
   */
  sync(): Promise<void> {
    const next = this.#rendering.catch(() => {}).then(() => this.render());
    this.#rendering = next;
    return next;
  }

  private async render(): Promise<void> {
    const publications: PortPublication[] = [];
    for (const vm of await this.deps.store.listVms()) {
      if (!vm.ip || !PLUGGED.includes(vm.state)) continue;
      for (const p of vm.ports) publications.push({ vmId: vm.id, proto: p.proto, hostPort: p.hostPort, guestIp: vm.ip, guestPort: p.guestPort });
    }
    await nftApply(renderRuleset({ table: this.table, bridge: this.config.bridge, subnet: this.subnet, publications }));
  }

  /** Start-up sweep: removes taps on kiln's bridge that belong to no running VM, then re-renders. */
  async sweep(): Promise<string[]> {
    const running = new Set((await this.deps.store.listVms()).filter((v) => PLUGGED.includes(v.state)).map((v) => tapName(v.id)));
    const removed: string[] = [];
    try {
      const keep = new Set((await this.deps.store.listVms()).filter((v) => PLUGGED.includes(v.state)).map((v) => cloneNetnsName(v.id)));
      // Namespaces are host-wide: only those whose veth is on this kilnd's bridge are its own.
      const ours = new Set((await ip.listLinks({ master: this.config.bridge })).map((l) => l.ifname));
      for (const ns of await strayCloneNamespaces(keep)) {
        const hostVeth = tapName(ns.slice(cloneNetnsName('').length));
        if (!ours.has(hostVeth)) continue;
        await removeCloneNetwork(ns, hostVeth);
        removed.push(ns);
      }
      for (const link of await ip.listLinks({ master: this.config.bridge })) {
        if (link.ifname.startsWith(TAP_PREFIX) && !running.has(link.ifname)) {
          await ip.deleteLink(link.ifname);
          removed.push(link.ifname);
        }
      }
    } finally {
      // The table must reflect the store even if a stray tap could not be removed.
      if (removed.length) this.deps.log.warn({ taps: removed }, 'removed taps of VMs that are not running');
      await this.sync();
    }
    return removed;
  }

  /** Removes everything kiln added to the host (bridge, taps, table): `kiln` uninstall and tests. */
  async teardown(): Promise<void> {
    for (const link of await ip.listLinks({ master: this.config.bridge }).catch(() => [])) await ip.deleteLink(link.ifname);
    if (await ip.linkExists(this.config.bridge)) await ip.deleteLink(this.config.bridge);
    await nftDeleteTable(NFT_FAMILY, this.table);
  }
}

/**
 * A published port must be free on the host too: a DNAT rule would silently steal traffic
 * from whatever listens there. Checked by binding it for a moment.
 */
export async function assertHostPortFree(proto: 'tcp' | 'udp', port: number): Promise<void> {
  const inUse = () => new KilnError('KILN_ERR_PORT_CONFLICT', `host port ${proto}/${port} is in use by another process on this host`);
  if (proto === 'tcp') {
    await new Promise<void>((resolve, reject) => {
      const srv = net.createServer();
      srv.once('error', (e: NodeJS.ErrnoException) => reject(e.code === 'EADDRINUSE' ? inUse() : e));
      srv.listen({ port, host: '0.0.0.0', exclusive: true }, () => srv.close(() => resolve()));
    });
  } else {
    await new Promise<void>((resolve, reject) => {
      const sock = dgram.createSocket('udp4');
      sock.once('error', (e: NodeJS.ErrnoException) => {
        sock.close();
        reject(e.code === 'EADDRINUSE' ? inUse() : e);
      });
      sock.bind({ port, address: '0.0.0.0', exclusive: true }, () => sock.close(() => resolve()));
    });
  }
}

async function writeSysctl(key: string, value: string): Promise<void> {
  const file = `/proc/sys/${key}`;
  const cur = (await fs.readFile(file, 'utf8').catch(() => '')).trim();
  if (cur !== value) await fs.writeFile(file, value);
}

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
import { DEFAULT_EGRESS } from './egress.ts';
import type { NicSpec } from '../vmm/driver.ts';
import { cloneNetnsName, netnsExists, removeCloneNetwork, strayCloneNamespaces } from './clone-netns.ts';
import { lowestFree, macFor, overlaps, parseSubnet, toDotted, toInt, type Subnet } from './ipv4.ts';
import { renderRuleset, tableName, tablesFor, type GuestPort, type PortPublication } from './ruleset.ts';

/** VMs in these states have a VMM, so their tap and port rules must exist. */
const PLUGGED: readonly VmState[] = ['booting', 'ready', 'paused', 'stopping'];
const TAP_PREFIX = 'kiln';
/** /sys/class/net/<dev>/addr_assign_type of an address set by hand (not random, not inherited). */
const NET_ADDR_SET = '3';

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
  /** The render waiting for the current one to finish (not started: it has not read the store yet). */
  #queued: Promise<void> | null = null;
  #agentPort: number | null = null;
  /** VMs plugged by this kilnd whose state may not say so yet (a boot before 'booting'). */
  readonly #attached = new Set<string>();
  #hostNetworks: string[] = [];

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
      await ip.setLinkAddress(bridge, macFor(this.subnet.gateway));
      this.deps.log.info({ bridge, cidr: gwCidr }, 'created bridge');
    }
    await this.pinBridgeMac();
    await ip.addAddress(bridge, gwCidr);
    await ip.setLinkUp(bridge);
    // Forwarding for egress NAT. route_localnet: the host's own connections to a published
    // port on 127.0.0.1 are DNATed onto the bridge with their loopback source, which the
    // kernel refuses to route out of a link without it (the masquerade that fixes the source
    // comes after routing). Guests cannot use it: the ruleset drops 127.0.0.0/8 from the
    // bridge before routing (the CVE-2020-8558 guard, src/net/ruleset.ts).
    await writeSysctl('net/ipv4/ip_forward', '1');
    await writeSysctl(`net/ipv4/conf/${bridge}/route_localnet`, '1');
    // The host's entries for leased addresses are permanent (plug); a guest's ARP must never
    // create one (older kilnds turned this on for the neighbour-table readiness fallback).
    await writeSysctl(`net/ipv4/conf/${bridge}/arp_accept`, '0');
    this.#hostNetworks = await this.hostNetworks();
  }

  /**
   * A bridge whose MAC the kernel picked follows its ports' MACs: each tap that joins or
   * leaves can change it, which flushes every neighbour entry on it, permanent ones included
   * (and changes the gateway MAC guests have cached). Setting the address once pins it.
   */
  private async pinBridgeMac(): Promise<void> {
    const bridge = this.config.bridge;
    const assigned = (await fs.readFile(`/sys/class/net/${bridge}/addr_assign_type`, 'utf8').catch(() => '')).trim();
    if (assigned === NET_ADDR_SET) return;
    const mac = await this.bridgeMac();
    await ip.setLinkAddress(bridge, mac ?? macFor(this.subnet.gateway));
  }

  /** The agent's push listener port: the one host port guests may open connections to. */
  setAgentPort(port: number | null): void {
    this.#agentPort = port;
  }

  /** IPv4 networks on the host's other links: blocked by the default egress policy. */
  private async hostNetworks(): Promise<string[]> {
    const ours = new Set([this.config.bridge, ...(await ip.listLinks({ master: this.config.bridge })).map((l) => l.ifname)]);
    const out = new Set<string>();
    for (const link of await ip.listAddresses().catch(() => [])) {
      if (link.ifname === 'lo' || ours.has(link.ifname)) continue;
      for (const a of link.addr_info) {
        if (a.family !== 'inet' || a.local.startsWith('127.')) continue;
        const size = 2 ** (32 - a.prefixlen);
        const n = toInt(a.local);
        out.add(`${toDotted(n - (n % size))}/${a.prefixlen}`);
      }
    }
    return [...out].sort();
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

  /**
   * Creates the VM's tap on the bridge, isolated from other VMs' taps, with the host's
   * permanent neighbour entry for its lease, and renders the rules that hold the tap to its
   * own MAC/IPv4 and egress policy before the guest can send anything. Idempotent.
   */
  async plug(vm: VmRecord): Promise<NicSpec> {
    if (!vm.ip) throw new KilnError('KILN_ERR_INTERNAL', `VM ${vm.id} has no address leased`);
    const tap = tapName(vm.id);
    const bridge = this.config.bridge;
    const commands = [...ip.tapOnBridgeCommands(tap, bridge, this.config.tapOwner), permanentNeighbour(vm.ip, bridge)];
    const makeTap = async () => {
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
    };
    // The rules name the tap only as a string: they load while the tap is made, and both are
    // in place before the VMM (and so the guest) starts. Its port publications go in the same
    // render (the boot needs no second one once the state says 'booting').
    this.#attached.add(vm.id);
    const [made, rendered] = await Promise.allSettled([makeTap(), this.sync()]);
    if (made.status === 'rejected' || rendered.status === 'rejected') {
      if (made.status === 'fulfilled') await ip.deleteLink(tap).catch(() => {});
      this.#attached.delete(vm.id);
      throw made.status === 'rejected' ? made.reason : (rendered as PromiseRejectedResult).reason;
    }
    return { tap, mac: macFor(vm.ip) };
  }

  /**
   * Cluster fencing (VmManager.fence): this node runs no VM any more and may not reach the
   * store, so its VM network comes off the host without it: the killed VMs' taps and kiln's
   * nftables table (its per-port rules would still claim those tap names, with the old
   * addresses, if another kilnd on this host's network made them again). The next sync()
   * renders the table from the store.
   */
  async takeDown(vmIds: readonly string[]): Promise<void> {
    for (const id of vmIds) {
      this.#attached.delete(id);
      const tap = tapName(id);
      if (await ip.linkExists(tap)) await ip.deleteLink(tap).catch((e) => this.deps.log.error({ vm: id, err: e }, 'removing tap failed'));
    }
    for (const [family, table] of tablesFor(this.config.bridge)) {
      await nftDeleteTable(family, table).catch((e) => this.deps.log.error({ table, err: e }, 'removing the nftables table failed'));
    }
  }

  /** `lease`: the VM's address, when its row may be gone already (delete). */
  async unplug(vmId: string, lease?: string | null): Promise<void> {
    this.#attached.delete(vmId);
    const tap = tapName(vmId);
    // A restored clone's tap is the host end of its namespace's veth (src/net/clone-netns.ts).
    if (await netnsExists(cloneNetnsName(vmId))) await removeCloneNetwork(cloneNetnsName(vmId), tap);
    else if (await ip.linkExists(tap)) await ip.deleteLink(tap);
    const addr = lease ?? (await this.deps.store.getVm(vmId).catch(() => null))?.ip;
    if (addr) await ip.deleteNeighbour(addr, this.config.bridge).catch(() => {});
  }

  /** The bridge's current MAC: the gateway MAC guests cache (recorded in snapshots). */
  async bridgeMac(): Promise<string | null> {
    const links = await ip.listLinks().catch(() => []);
    return links.find((l) => l.ifname === this.config.bridge)?.address ?? null;
  }

  /**
   * Re-renders kiln's nftables table from the store. Serialised, and coalesced: a render reads
   * the store when it starts, so every caller that arrives while one is waiting to start
   * shares it (N concurrent creates cost two renders, not N one after the other), and a
   * caller that arrives once it has started gets the next one.
   */
  sync(): Promise<void> {
    if (this.#queued) return this.#queued;
    const next = this.#rendering.catch(() => {}).then(() => {
      this.#queued = null;
      return this.render();
    });
    this.#queued = next;
    this.#rendering = next;
    return next;
  }

  private async render(): Promise<void> {
    const publications: PortPublication[] = [];
    const guests: GuestPort[] = [];
    for (const vm of await this.deps.store.listVms()) {
      if (!vm.ip) continue;
      // Every lease, running or not: a port's rules exist before its guest can send.
      guests.push({ vmId: vm.id, ifname: tapName(vm.id), mac: macFor(vm.ip), ip: vm.ip, egress: vm.egress ?? DEFAULT_EGRESS });
      if (!PLUGGED.includes(vm.state) && !this.#attached.has(vm.id)) continue;
      for (const p of vm.ports) publications.push({ vmId: vm.id, proto: p.proto, hostPort: p.hostPort, guestIp: vm.ip, guestPort: p.guestPort });
    }
    await nftApply(renderRuleset({
      table: this.table, bridge: this.config.bridge, subnet: this.subnet, publications, guests, agentPort: this.#agentPort, hostNetworks: this.#hostNetworks,
    }));
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
      // Running VMs keep (or, plugged by an older kilnd, get) their permanent neighbour entry.
      const leases = (await this.deps.store.listVms()).filter((v) => v.ip && PLUGGED.includes(v.state));
      if (leases.length) await ip.ipBatch(leases.map((v) => permanentNeighbour(v.ip!, this.config.bridge)));
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
    for (const [family, table] of tablesFor(this.config.bridge)) await nftDeleteTable(family, table);
  }
}

/** The host's neighbour entry for a lease: fixed, so no ARP from any guest can move it. */
export function permanentNeighbour(addr: string, dev: string): string[] {
  return ['neigh', 'replace', addr, 'lladdr', macFor(addr), 'dev', dev, 'nud', 'permanent'];
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

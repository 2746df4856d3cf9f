// Network isolation against a hostile guest (issue #13, acceptance 1 and 2): real VMs whose
// workload, root in the guest, tries to reach the host's loopback, the host's services, cloud
// metadata, private ranges, and to spoof its addresses (test/helpers/hostile-guest.ts). Every
// target is real and first proven reachable from the host: a listener on 127.0.0.1, one on
// all host addresses (IPv4 and IPv6), and a network namespace made here that stands in for
// the internet (198.18.x.1), a private network (172.31.x.1/.2) and a metadata endpoint
// (169.254.169.254). Each attack is its own assertion with the guest's evidence; the host's
// own view (listener logs, nftables drop counters, neighbour table, bridge FDB) backs it.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { tableName, NFT_BRIDGE_FAMILY, NFT_FAMILY } from '../src/net/ruleset.ts';
import { tapName } from '../src/net/network-manager.ts';
import { macFor } from '../src/net/ipv4.ts';
import { run } from '../src/util/process.ts';
import { KilnApiError } from '../src/sdk/client.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { DONE_MARKER, hostileScript, parseProbeLines, type Probe, type ProbeResult } from './helpers/hostile-guest.ts';
import { startKilnd, waitForLog, waitForState, type TestDaemon } from './helpers/kilnd.ts';

const NS_PORT = 9000;
const x = randomInt(1, 250);
/** The test's namespace: its addresses, and the host's own address on the veth to it. */
const target = {
  ns: `ktiso${randomBytes(3).toString('hex')}`,
  veth: `ktiv${randomBytes(3).toString('hex')}`,
  hostAddr: `192.0.2.${x}`,
  internet: `198.18.${x}.1`,
  privateAllowed: `172.31.${x}.1`,
  privateBlocked: `172.31.${x}.2`,
  metadata: '169.254.169.254',
};
const v6 = { net: `fd6b:${randomBytes(2).toString('hex')}::`, host: '', guest: '' };
v6.host = `${v6.net}1`;
v6.guest = `${v6.net}2`;

/** A TCP listener that answers "ANSWER <label>" and records who connected to which address. */
class Listener {
  readonly hits: { peer: string; local: string }[] = [];
  readonly server = net.createServer((s) => {
    this.hits.push({ peer: s.remoteAddress ?? '?', local: s.localAddress ?? '?' });
    s.end(`ANSWER ${this.label}\n`);
    s.on('error', () => {});
  });
  constructor(private readonly label: string) {}
  async listen(host: string): Promise<number> {
    await new Promise<void>((r) => this.server.listen({ port: 0, host }, r));
    return (this.server.address() as net.AddressInfo).port;
  }
}

let d: TestDaemon;
/**
 * The test's own witness on the host: guest packets to 127.0.0.0/8 that routing delivered
 * locally. The guest cannot tell (its kernel drops the host's replies from 127.0.0.1), so the
 * host counts: without kiln's guard, the loopback attacks' SYNs land here.
 */
const witness = `kt_witness_${randomBytes(3).toString('hex')}`;
let nsServer: ChildProcess | undefined;
const nsHits: string[] = [];
const loopback = new Listener('host-loopback');
const anyHost = new Listener('host-any');
let loopbackPort = 0;
let anyPort = 0;

async function makeTargetNamespace(): Promise<void> {
  const { ns, veth } = target;
  await run('ip', ['netns', 'add', ns]);
  await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await run('ip', ['addr', 'add', `${target.hostAddr}/32`, 'dev', veth]);
  await run('ip', ['link', 'set', veth, 'up']);
  const inNs = ['internet', 'privateAllowed', 'privateBlocked', 'metadata'] as const;
  for (const k of inNs) await run('ip', ['route', 'add', `${target[k]}/32`, 'dev', veth, 'src', target.hostAddr]);
  for (const k of inNs) await run('ip', ['-n', ns, 'addr', 'add', `${target[k]}/32`, 'dev', 'eth0']);
  await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await run('ip', ['-n', ns, 'route', 'add', target.hostAddr, 'dev', 'eth0']);
  // One server on every namespace address: it prints which address each connection came to.
  const script = `require('net').createServer((s) => { console.log('HIT ' + s.localAddress); s.end('ANSWER ns ' + s.localAddress + '\\n'); s.on('error', () => {}); }).listen(${NS_PORT}, '0.0.0.0', () => console.log('LISTENING'));`;
  nsServer = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    nsServer!.once('exit', (c) => reject(new Error(`namespace server exited (${c})`)));
    nsServer!.stdout!.on('data', (b) => {
      buf += b;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'LISTENING') resolve();
        else if (line.startsWith('HIT ')) nsHits.push(line.slice(4));
      }
    });
  });
}

async function removeTargetNamespace(): Promise<void> {
  nsServer?.kill('SIGKILL');
  await run('ip', ['link', 'del', target.veth]).catch(() => {});
  await run('ip', ['netns', 'del', target.ns]).catch(() => {});
}

/** From the host: the answer of a TCP target (proves the target is live before a guest is refused it). */
async function hostProbe(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, timeout: 3000 }, () => s.write('probe\n'));
    let got = '';
    s.on('data', (b) => (got += b));
    s.on('end', () => resolve(got.trim()));
    s.on('timeout', () => s.destroy(new Error(`host → ${host}:${port} timed out`)));
    s.on('error', reject);
  });
}

function eui64LinkLocal(mac: string): string {
  const b = mac.split(':').map((h) => parseInt(h, 16));
  b[0]! ^= 2;
  const words = [(b[0]! << 8) | b[1]!, (b[2]! << 8) | 0xff, (0xfe << 8) | b[3]!, (b[4]! << 8) | b[5]!];
  return `fe80::${words.map((w) => w.toString(16)).join(':')}`;
}

async function freePort(): Promise<number> {
  const l = net.createServer();
  await new Promise<void>((r) => l.listen(0, '127.0.0.1', r));
  const { port } = l.address() as net.AddressInfo;
  await new Promise((r) => l.close(r));
  return port;
}

async function eventually<T>(fn: () => Promise<T>, deadlineMs = 30_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function httpGet(host: string, port: number): Promise<string> {
  const res = await fetch(`http://${host}:${port}/id`, { signal: AbortSignal.timeout(5000) });
  return (await res.text()).trim();
}

/** The packet count of the first rule in `chain` whose text matches `re`. */
async function counter(family: string, chain: string, re: RegExp): Promise<number> {
  const text = (await run('nft', ['list', 'chain', family, tableName(d.network.bridge), chain])).stdout;
  const line = text.split('\n').find((l) => re.test(l));
  assert.ok(line, `rule ${re} in ${family} ${chain}:\n${text}`);
  return Number(/counter packets (\d+)/.exec(line)![1]);
}

function assertAttacks(results: Map<string, ProbeResult>, attacks: Probe[], log: string): void {
  for (const a of attacks) {
    const r = results.get(a.name);
    assert.ok(r, `attack ${a.name} (${a.what}) did not report; console tail:\n${log.slice(-3000)}`);
    assert.equal(r.verdict, 'blocked', `attack ${a.name} succeeded — ${a.what}; evidence: ${r.evidence}`);
    if (a.armed) assert.match(r.evidence, a.armed, `attack ${a.name} did not really run — ${a.what}; evidence: ${r.evidence}`);
  }
}

function assertControls(results: Map<string, ProbeResult>, controls: Probe[], log: string): void {
  for (const c of controls) {
    const r = results.get(c.name);
    assert.ok(r, `control ${c.name} did not report; console tail:\n${log.slice(-3000)}`);
    assert.equal(r.verdict, 'ok', `control ${c.name} failed — ${c.what}; evidence: ${r.evidence}`);
  }
}

// ---- probes (append new attacks to these lists) ----

const egressControls: Probe[] = [
  { name: 'egress-internet', what: 'the default policy lets the guest reach a public address', sh: 'tcp_probe $INET $NS_PORT' },
  { name: 'egress-allowed-private', what: 'a private address the VM’s policy allows is reachable', sh: 'tcp_probe $PRIV_OK $NS_PORT' },
];

/** Attacks that leave the guest as they found it (also run by exec in a clone). */
const reversibleAttacks: Probe[] = [
  { name: 'host-gateway-port', what: 'a host service on the gateway address', sh: 'tcp_probe $GW $ANY_PORT', armed: /nc \S+ -> \[/ },
  { name: 'host-other-address', what: 'a host service on another host address (not the bridge)', sh: 'tcp_probe $HOST_ADDR $ANY_PORT', armed: /nc \S+ -> \[/ },
  { name: 'host-kilnd-api-via-gateway', what: 'kilnd’s API port on the gateway address', sh: 'http_probe $GW $KILND_PORT', armed: /http \S+ -> \[/ },
  { name: 'metadata-link-local', what: 'a metadata endpoint at 169.254.169.254', sh: 'tcp_probe $META $NS_PORT', armed: /nc \S+ -> \[/ },
  { name: 'private-range', what: 'a private (RFC 1918) address the policy does not allow', sh: 'tcp_probe $PRIV_BLOCKED $NS_PORT', armed: /nc \S+ -> \[/ },
  {
    name: 'ip-spoof-source',
    what: 'traffic from an address that is not the VM’s lease',
    sh: String.raw`ip addr add $SPOOF_IP/32 dev eth0 2>&1
ip route add $INET/32 via $GW dev eth0 src $SPOOF_IP 2>&1
echo "route: $(ip route get $INET 2>&1)"
tcp_probe $INET $NS_PORT; rc=$?
ip route del $INET/32 2>&1; ip addr del $SPOOF_IP/32 dev eth0 2>&1
return $rc`,
    armed: /src \d+\.\d+\.\d+\.250 .*nc \S+ -> \[/,
  },
  {
    name: 'host-ipv6',
    what: 'a host service over IPv6 (an address the test put on the bridge)',
    sh: String.raw`echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip -6 addr add $V6_GUEST/64 dev eth0 2>&1
echo "v6: $(ip -6 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f4 | tr '\n' ' ')"
tcp_probe $V6_HOST $ANY_PORT; rc=$?
ip -6 addr del $V6_GUEST/64 dev eth0 2>&1
return $rc`,
    armed: /v6: fd[0-9a-f:]+::2\/64 .*nc \S+ -> \[/,
  },
  { name: 'host-ipv6-link-local', what: 'the bridge’s IPv6 link-local address (ICMPv6 echo)', sh: 'ping6 -c 2 -W 3 -I eth0 $BR_LL 2>&1', armed: /PING fe80:/ },
];

/** Attacks that change the guest's link or routes (restored after): run last, in the VM's own workload. */
const linkAttacks: Probe[] = [
  {
    name: 'mac-spoof',
    what: 'traffic from a MAC that is not the VM’s',
    sh: String.raw`ip link set eth0 down; ip link set eth0 address 02:6b:de:ad:be:ef 2>&1; ip link set eth0 up; ip route add default via $GW 2>/dev/null
echo "mac: $(cat /sys/class/net/eth0/address)"
tcp_probe $INET $NS_PORT; rc=$?
ip link set eth0 down; ip link set eth0 address $MY_MAC; ip link set eth0 up; ip route add default via $GW 2>/dev/null
return $rc`,
    armed: /mac: 02:6b:de:ad:be:ef nc \S+ -> \[/,
  },
  {
    name: 'host-loopback',
    what: 'a host service on 127.0.0.1 (guest dropped its local route and set route_localnet: CVE-2020-8558)',
    sh: 'arm_loopback; tcp_probe 127.0.0.1 $LOOP_PORT',
    armed: /ARMED 127\.0\.0\.1 via \S+ dev eth0 .*nc 127\.0\.0\.1:\d+ -> \[/,
  },
  {
    name: 'host-kilnd-api-loopback',
    what: 'kilnd’s API on the host’s 127.0.0.1',
    sh: 'arm_loopback; http_probe 127.0.0.1 $KILND_PORT',
    armed: /ARMED 127\.0\.0\.1 via \S+ dev eth0 .*http 127\.0\.0\.1:\d+ -> \[/,
  },
];

/** Arms the loopback attacks: 127.0.0.1 leaves the guest through eth0 towards the gateway. */
const LOOPBACK_SETUP = String.raw`
arm_loopback() {
  ip route del local 127.0.0.0/8 dev lo table local 2>&1
  ip route del local 127.0.0.1 dev lo table local 2>&1
  for k in all eth0 lo; do echo 1 > /proc/sys/net/ipv4/conf/$k/route_localnet; done
  ip route add 127.0.0.0/8 via $GW dev eth0 src $MY_IP 2>&1
  echo "ARMED $(ip route get 127.0.0.1 2>&1 | head -1)"
}
disarm_loopback() {
  ip route del 127.0.0.0/8 via $GW dev eth0 2>/dev/null
  ip route add local 127.0.0.0/8 dev lo table local 2>/dev/null
  ip route add local 127.0.0.1 dev lo table local 2>/dev/null
}
`;
/** Holds the workload until the test says go (after ready): its attacks never race the boot. */
const WAIT_FOR_GO = 'while [ ! -e /tmp/go ]; do sleep 0.2; done';

describe('network isolation against a hostile guest', { skip }, () => {
  before(async () => {
    if (skip) return;
    await makeTargetNamespace();
    loopbackPort = await loopback.listen('127.0.0.1');
    anyPort = await anyHost.listen('::');
    d = await startKilnd();
    await run('ip', ['-6', 'addr', 'add', `${v6.host}/64`, 'dev', d.network.bridge, 'nodad']);
    const rules = `table inet ${witness} {\n chain input {\n  type filter hook input priority -10; policy accept;\n  iifname "${d.network.bridge}" ip daddr 127.0.0.0/8 counter\n }\n}\n`;
    await run('nft', ['-f', '-'], { input: rules });
  });
  after(async () => {
    await run('nft', ['delete', 'table', 'inet', witness]).catch(() => {});
    await d?.dispose();
    await removeTargetNamespace();
    loopback.server.close();
    anyHost.server.close();
  });

  /** Variables every hostile script gets. */
  async function scriptVars(vmIp: string): Promise<Record<string, string | number>> {
    const gw = d.network.cidr.replace(/\.0\/\d+$/, '.1');
    // The bridge's link-local address (EUI-64 of its pinned MAC): it exists once a port is up.
    const [link] = JSON.parse((await run('ip', ['-j', 'link', 'show', 'dev', d.network.bridge])).stdout) as { address: string }[];
    const ll = eui64LinkLocal(link!.address);
    return {
      GW: gw, MY_IP: vmIp, MY_MAC: macFor(vmIp), SPOOF_IP: d.network.cidr.replace(/\.0\/\d+$/, '.250'),
      LOOP_PORT: loopbackPort, ANY_PORT: anyPort, KILND_PORT: new URL(d.url).port, NS_PORT,
      HOST_ADDR: target.hostAddr, INET: target.internet, PRIV_OK: target.privateAllowed, PRIV_BLOCKED: target.privateBlocked, META: target.metadata,
      V6_HOST: v6.host, V6_GUEST: v6.guest, BR_LL: ll,
    };
  }

  test('every attack fails while the published port, allowed egress and exec keep working', async (t) => {
    // The targets are live: the host itself reaches each of them.
    for (const a of [target.internet, target.privateAllowed, target.privateBlocked, target.metadata]) {
      assert.match(await hostProbe(a, NS_PORT), /^ANSWER ns /, `host reaches ${a}`);
    }
    assert.equal(await hostProbe('127.0.0.1', loopbackPort), 'ANSWER host-loopback');
    assert.equal(await hostProbe(v6.host, anyPort), 'ANSWER host-any');
    loopback.hits.length = 0;
    anyHost.hits.length = 0;
    nsHits.length = 0;
    const guardBefore = await counter(NFT_FAMILY, 'guard', /ip daddr 127\.0\.0\.0\/8/);

    const hostPort = await freePort();
    // The script names the VM's own address: the one the next create leases (lowest free).
    const probeIp = await leasedAddressFor();
    const attacks = [...reversibleAttacks, ...linkAttacks];
    const script = hostileScript({
      vars: await scriptVars(probeIp),
      prologue: `mkdir -p /www && echo hostile > /www/id && httpd -p 80 -h /www\n${LOOPBACK_SETUP}\n${WAIT_FOR_GO}`,
      controls: egressControls,
      attacks,
      epilogue: 'disarm_loopback\nexec sleep 3600',
    });
    const vm = await d.client.createVm({
      name: 'hostile',
      cmd: ['/bin/sh', '-c', script],
      ports: [{ host: hostPort, guest: 80 }],
      egress: { internet: true, allow: [`${target.privateAllowed}/32`] },
    }, { wait: true });
    assert.equal(vm.ip, probeIp, 'the lease the script was written for');
    assert.deepEqual(vm.egress, { allow: [`${target.privateAllowed}/32`], internet: true });
    await d.client.exec(vm.id, { cmd: ['/bin/touch', '/tmp/go'] });
    const log = await waitForLog(d.client, vm.id, new RegExp(DONE_MARKER), 240_000);
    const results = parseProbeLines(log);
    for (const r of results.values()) t.diagnostic(`${r.kind} ${r.name} ${r.verdict} ${r.evidence}`);
    assertControls(results, egressControls, log);
    assertAttacks(results, attacks, log);

    // The host's side of the story.
    assert.deepEqual(loopback.hits, [], 'nothing connected to the host’s 127.0.0.1 listener');
    assert.deepEqual(anyHost.hits, [], 'nothing connected to the host-wide listener (gateway, other address, IPv6)');
    const unexpected = nsHits.filter((a) => a !== target.internet && a !== target.privateAllowed);
    assert.deepEqual(unexpected, [], 'the namespace saw connections only to what the policy allows');
    const delivered = Number(/counter packets (\d+)/.exec((await run('nft', ['list', 'table', 'inet', witness])).stdout)![1]);
    assert.equal(delivered, 0, `the host delivered ${delivered} guest packets addressed to 127.0.0.0/8 to its own stack (CVE-2020-8558)`);
    assert.ok((await counter(NFT_FAMILY, 'guard', /ip daddr 127\.0\.0\.0\/8/)) > guardBefore, 'the guest’s 127.0.0.1 packets reached the bridge and were dropped by the guard');
    assert.ok((await counter(NFT_BRIDGE_FAMILY, 'prerouting', /drop/)) > 0, 'spoofed frames were dropped at the bridge port');

    // What must keep working.
    assert.equal(await eventually(() => httpGet('127.0.0.1', hostPort)), 'hostile', 'the VM’s published port on 127.0.0.1');
    const exec = await d.client.exec(vm.id, { cmd: ['/bin/sh', '-c', 'echo exec-ok; cat /sys/class/net/eth0/address'] });
    assert.equal(exec.exit_code, 0, JSON.stringify(exec));
    assert.equal(exec.stdout, `exec-ok\n${macFor(vm.ip!)}\n`, 'kiln exec reaches the guest agent (and the guest has its own MAC back)');
    await d.client.deleteVm(vm.id);
  });

  test('a bad egress policy is refused with a stable code and leaves nothing behind', async () => {
    const before = (await d.client.listVms()).length;
    for (const [egress, re] of [
      [{ allow: ['10.0.0.1/8'] }, /10\.0\.0\.1\/8.*did you mean 10\.0\.0\.0\/8/],
      [{ allow: ['fd00::/8'] }, /fd00::\/8/],
      [{ allow: ['10.0.0.0/33'] }, /10\.0\.0\.0\/33/],
    ] as const) {
      await d.client.createVm({ name: 'bad-egress', egress: egress as never }).then(
        () => assert.fail(`egress ${JSON.stringify(egress)} was accepted`),
        (e: KilnApiError) => {
          assert.equal(e.code, 'KILN_ERR_VALIDATION', e.message);
          assert.match(e.message, re);
        },
      );
    }
    await d.client.createVm({ name: 'bad-egress', network: 'none', egress: 'none' }).then(
      () => assert.fail('egress without a network was accepted'),
      (e: KilnApiError) => assert.equal(e.code, 'KILN_ERR_VALIDATION'),
    );
    assert.equal((await d.client.listVms()).length, before, 'no VM record left by a refused create');
  });

  test('egress "none": the guest reaches no address beyond the host; exec still works', async () => {
    const ip = await leasedAddressFor();
    const attacks: Probe[] = [
      { name: 'none-internet', what: 'a public address under egress "none"', sh: 'tcp_probe $INET $NS_PORT' },
      { name: 'none-private', what: 'a private address under egress "none"', sh: 'tcp_probe $PRIV_OK $NS_PORT' },
    ];
    nsHits.length = 0;
    const vm = await d.client.createVm({ name: 'sealed', egress: 'none', cmd: ['/bin/sh', '-c', hostileScript({ vars: await scriptVars(ip), prologue: WAIT_FOR_GO, attacks, epilogue: 'exec sleep 3600' })] }, { wait: true });
    assert.equal(vm.egress, 'none');
    await d.client.exec(vm.id, { cmd: ['/bin/touch', '/tmp/go'] });
    const log = await waitForLog(d.client, vm.id, new RegExp(DONE_MARKER), 120_000);
    assertAttacks(parseProbeLines(log), attacks, log);
    assert.deepEqual(nsHits, [], 'the namespace saw no connection');
    const exec = await d.client.exec(vm.id, { cmd: ['/bin/echo', 'sealed-exec'] });
    assert.equal(exec.stdout, 'sealed-exec\n');
    await d.client.deleteVm(vm.id);
  });

  test('a VM that claims another VM’s IP and MAC gets none of its traffic', async () => {
    const hostPort = await freePort();
    const victim = await d.client.createVm(
      { name: 'victim', ports: [{ host: hostPort, guest: 80 }], cmd: ['/bin/sh', '-c', 'mkdir -p /www && echo victim > /www/id && echo victim > /tmp/who && httpd -p 80 -h /www && echo serving && exec sleep 3600'] },
      { wait: true },
    );
    await waitForLog(d.client, victim.id, /serving/);
    assert.equal(await eventually(() => httpGet('127.0.0.1', hostPort)), 'victim');
    const vip = victim.ip!;
    const vmac = macFor(vip);
    const gw = d.network.cidr.replace(/\.0\/\d+$/, '.1');
    // The attacker takes the victim's MAC and address, announces them (gratuitous ARP, and
    // ARP replies for it) and serves its own answer on the victim's ports.
    const attacker = await d.client.createVm({
      name: 'attacker',
      cmd: ['/bin/sh', '-c', String.raw`mkdir -p /www && echo attacker > /www/id && echo attacker > /tmp/who && httpd -p 80 -h /www
${WAIT_FOR_GO}
ip link set eth0 down; ip link set eth0 address ${vmac}; ip addr flush dev eth0; ip addr add ${vip}/24 dev eth0; ip link set eth0 up; ip route add default via ${gw}
echo "SPOOF armed $(cat /sys/class/net/eth0/address) $(ip -4 -o addr show dev eth0)"
while true; do arping -U -c 1 -I eth0 ${vip} >/dev/null 2>&1; arping -A -c 1 -I eth0 ${vip} >/dev/null 2>&1; sleep 0.2; done`],
    }, { wait: true });
    await d.client.exec(attacker.id, { cmd: ['/bin/touch', '/tmp/go'] });
    await waitForLog(d.client, attacker.id, new RegExp(`SPOOF armed ${vmac}.*${vip.replaceAll('.', '\\.')}/24`), 120_000);
    // Let the spoofed announcements run for a while, then check every path to the victim.
    for (let i = 0; i < 5; i++) {
      assert.equal(await httpGet('127.0.0.1', hostPort), 'victim', `published traffic reaches the victim (round ${i})`);
      const who = await d.client.exec(victim.id, { cmd: ['/bin/cat', '/tmp/who'] });
      assert.equal(who.stdout, 'victim\n', `kilnd’s exec session reaches the victim (round ${i})`);
      assert.equal(await httpGet(vip, 80), 'victim', `the host's direct traffic to ${vip} reaches the victim (round ${i})`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const neigh = (await run('ip', ['-4', 'neigh', 'show', vip, 'dev', d.network.bridge])).stdout.trim();
    assert.match(neigh, new RegExp(`lladdr ${vmac} PERMANENT`), `the host's neighbour entry is still the victim's: ${neigh}`);
    const fdb = JSON.parse((await run('bridge', ['-j', 'fdb', 'show', 'br', d.network.bridge])).stdout) as { mac: string; ifname: string }[];
    const ports = fdb.filter((e) => e.mac === vmac).map((e) => e.ifname);
    assert.ok(!ports.includes(tapName(attacker.id)), `the bridge never learned the victim's MAC on the attacker's port: ${JSON.stringify(ports)}`);
    await Promise.all([d.client.deleteVm(victim.id), d.client.deleteVm(attacker.id)]);
    const left = (await run('ip', ['-4', 'neigh', 'show', vip, 'dev', d.network.bridge])).stdout.trim();
    assert.doesNotMatch(left, /PERMANENT/, `the released lease's permanent entry is removed: ${left}`);
  });

  test('a template clone is held to the same policy (probes run by exec in the clone)', async (t) => {
    const clone = await d.client.createVm({ name: 'clone-probe', template: 'default' }, { wait: true, timeoutMs: 300_000 });
    await waitForState(d.client, clone.id, ['ready']);
    nsHits.length = 0;
    loopback.hits.length = 0;
    anyHost.hits.length = 0;
    // The guest in a clone keeps its snapshot's address; spoofing is judged from its namespace
    // onward (the host sees the clone's lease), so its vars name the clone's own address.
    const script = hostileScript({ vars: await scriptVars(clone.ip!), controls: [egressControls[0]!], attacks: reversibleAttacks.filter((a) => a.name !== 'ip-spoof-source') });
    const out = await d.client.exec(clone.id, { cmd: ['/bin/sh', '-c', script], timeoutMs: 120_000 });
    const results = parseProbeLines(out.stdout);
    for (const r of results.values()) t.diagnostic(`clone: ${r.kind} ${r.name} ${r.verdict} ${r.evidence}`);
    assertControls(results, [egressControls[0]!], out.stdout + out.stderr);
    assertAttacks(results, reversibleAttacks.filter((a) => a.name !== 'ip-spoof-source'), out.stdout + out.stderr);
    assert.deepEqual(anyHost.hits, [], 'no host service reached from the clone');
    assert.deepEqual(nsHits.filter((a) => a !== target.internet), [], 'the clone reached only the public stand-in');
    const l2 = (await run('nft', ['list', 'set', NFT_BRIDGE_FAMILY, tableName(d.network.bridge), 'ip_src'])).stdout;
    assert.match(l2, new RegExp(`"${tapName(clone.id)}" \\. ${macFor(clone.ip!)} \\. ${clone.ip!.replaceAll('.', '\\.')}`), 'the clone’s port is held to its lease');
    await d.client.deleteVm(clone.id);
  });

  /** The address the next VM will get: the lowest free one (leases are lowest-first). */
  async function leasedAddressFor(): Promise<string> {
    const taken = new Set((await d.client.listVms()).map((v) => v.ip));
    const base = d.network.cidr.replace(/\.0\/\d+$/, '.');
    for (let i = 2; i < 255; i++) if (!taken.has(base + i)) return base + i;
    throw new Error('subnet full');
  }
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLONE_NS_VETH, clonePlan, hostCommands, namespaceCommands, namespaceRuleset, namespaceSysctls } from './clone-netns.ts';
import { macFor } from './ipv4.ts';

const plan = clonePlan({
  vmId: 'vm-0123456789', bridge: 'kiln0', hostVeth: 'kiln0123456789', cloneIp: '10.118.0.9', prefix: 24,
  gateway: '10.118.0.1', guestIp: '10.118.0.5', tap: 'kilnaaaaaaaaaa', gatewayMac: '02:00:00:00:00:01',
});

test('the namespace is named after the VM; the clone side answers for the clone address with its own MAC', () => {
  assert.equal(plan.netns, 'kiln-vm-0123456789');
  assert.equal(plan.cloneMac, macFor('10.118.0.9'));
  const ns = namespaceCommands(plan).map((c) => c.join(' '));
  assert.ok(ns.includes(`link set dev ${CLONE_NS_VETH} address ${plan.cloneMac}`));
  assert.ok(ns.includes(`addr add 10.118.0.9/24 dev ${CLONE_NS_VETH}`));
  assert.ok(ns.includes('route add default via 10.118.0.1 dev veth0'));
});

test('inside: the template tap name, the gateway MAC the guest cached, a host route to the guest address', () => {
  const ns = namespaceCommands(plan).map((c) => c.join(' '));
  const tapAt = ns.indexOf('tuntap add dev kilnaaaaaaaaaa mode tap');
  assert.ok(tapAt >= 0);
  assert.ok(ns.indexOf('link set dev kilnaaaaaaaaaa address 02:00:00:00:00:01') > tapAt);
  assert.ok(ns.indexOf('route add 10.118.0.5/32 dev kilnaaaaaaaaaa') > tapAt);
  assert.ok(namespaceSysctls(plan).includes('net.ipv4.conf.kilnaaaaaaaaaa.proxy_arp=1'));
  assert.ok(namespaceSysctls(plan).includes('net.ipv4.ip_forward=1'));
});

test('the host end is an isolated port of the bridge, the peer created straight into the namespace', () => {
  const host = hostCommands(plan).map((c) => c.join(' '));
  assert.equal(host[0], 'netns add kiln-vm-0123456789');
  assert.equal(host[1], 'neigh flush to 10.118.0.9 dev kiln0');
  assert.ok(host.includes('link add kiln0123456789 type veth peer name veth0 netns kiln-vm-0123456789'));
  assert.ok(host.includes('link set dev kiln0123456789 type bridge_slave isolated on'));
  assert.ok(host.indexOf('link set dev kiln0123456789 up') > host.indexOf('link set dev kiln0123456789 master kiln0'));
});

test('NAT maps the clone address to the guest address in and the guest address to the clone address out', () => {
  const r = namespaceRuleset(plan);
  assert.match(r, /iifname "veth0" ip daddr 10\.118\.0\.9 dnat to 10\.118\.0\.5/);
  assert.match(r, /oifname "veth0" ip saddr 10\.118\.0\.5 snat to 10\.118\.0\.9/);
  assert.match(r, /hook prerouting priority dstnat/);
  assert.match(r, /hook postrouting priority srcnat/);
});

test('proxy ARP on the tap answers at once: the guest re-ARPs its gateway right after the identity op flushes its cache', () => {
  assert.ok(namespaceSysctls(plan).includes('net.ipv4.neigh.kilnaaaaaaaaaa.proxy_delay=0'));
});

test('with the guest MAC known, the namespace holds a permanent neighbour entry for the guest, after the tap exists', () => {
  assert.ok(!namespaceCommands(plan).some((c) => c[0] === 'neigh'));
  const ns = namespaceCommands({ ...plan, guestMac: '02:6b:0a:76:00:05' }).map((c) => c.join(' '));
  const at = ns.indexOf('neigh replace 10.118.0.5 lladdr 02:6b:0a:76:00:05 dev kilnaaaaaaaaaa nud permanent');
  assert.ok(at > ns.indexOf('tuntap add dev kilnaaaaaaaaaa mode tap'), ns.join('\n'));
});

test('the tap inside is made for the jailed VMM’s uid when it runs unprivileged', () => {
  const owned = clonePlan({
    vmId: 'vm-0123456789', bridge: 'kiln0', hostVeth: 'kiln0123456789', cloneIp: '10.118.0.9', prefix: 24,
    gateway: '10.118.0.1', guestIp: '10.118.0.5', tap: 'kilnaaaaaaaaaa', gatewayMac: '02:00:00:00:00:01', tapOwner: { uid: 990, gid: 991 },
  });
  assert.ok(namespaceCommands(owned).map((c) => c.join(' ')).includes('tuntap add dev kilnaaaaaaaaaa mode tap user 990 group 991'));
});

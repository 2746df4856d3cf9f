// A network namespace standing in for a separate host: a veth pair to the root namespace with
// a /30 (root side .1, namespace side .2), loopback up inside. A kilnd started in it
// (startKilnd({ netns, listen: `${nsIp}:0` })) has its own bridge, taps and nftables, reachable
// from the root namespace only over the veth, as a node on another machine would be.
// dispose() deletes the namespace (which takes its links, bridges, taps and nftables with it)
// and the root end of the veth; a test process that dies first still removes it (exit hook).
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { deleteLink, deleteNetns, ipBatch, ipBatchIn, linkExists, listNetns } from '../../src/tools/ip.ts';

export interface TestNetns {
  name: string;
  /** The root namespace's end of the veth. */
  hostIp: string;
  /** The namespace's own address: where its kilnd listens. */
  nsIp: string;
  dispose(): Promise<void>;
}

/** A /30 per namespace out of 10.253.0.0/16, the third octet random per test process. */
const block = randomInt(0, 256);
let next = 0;

export async function createNetns(): Promise<TestNetns> {
  const id = randomBytes(3).toString('hex');
  const name = `kt-ns-${id}`;
  const hostVeth = `ktv${id}`;
  const base = 4 * (next++ % 64);
  const hostIp = `10.253.${block}.${base + 1}`;
  const nsIp = `10.253.${block}.${base + 2}`;
  const emergency = () => {
    // Synchronous on purpose (process 'exit').
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    } catch {
      // already gone
    }
    try {
      execFileSync('ip', ['link', 'del', hostVeth], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  };
  process.once('exit', emergency);
  let disposed = false;
  const dispose = async () => {
    if (disposed) return;
    disposed = true;
    try {
      if ((await listNetns()).includes(name)) await deleteNetns(name);
      // Deleting the namespace deletes the veth's peer end, and with it this end, a moment
      // later: gone between the check and the delete is fine, still there is not.
      if (await linkExists(hostVeth)) await deleteLink(hostVeth).catch(async (e) => { if (await linkExists(hostVeth)) throw e; });
    } finally {
      process.removeListener('exit', emergency);
    }
  };
  try {
    await ipBatch([
      ['netns', 'add', name],
      ['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', 'uplink', 'netns', name],
      ['addr', 'add', `${hostIp}/30`, 'dev', hostVeth],
      ['link', 'set', hostVeth, 'up'],
    ]);
    await ipBatchIn(name, [
      ['link', 'set', 'lo', 'up'],
      ['addr', 'add', `${nsIp}/30`, 'dev', 'uplink'],
      ['link', 'set', 'uplink', 'up'],
      ['route', 'add', 'default', 'via', hostIp],
    ]);
  } catch (e) {
    await dispose().catch(() => {});
    throw e;
  }
  return { name, hostIp, nsIp, dispose };
}

// nsenter (util-linux): runs a command inside a named network namespace (`ip netns add`
// makes them under /run/netns). Only the network namespace is entered and the command is
// exec'd in place: `ip netns exec` also makes a mount namespace and remounts /sys, which
// nothing here needs, and costs a few ms more per call on the restore path.
import { run } from '../util/process.ts';

/** `nsenter` arguments that run `cmd args…` inside the named network namespace. */
export const netnsExecArgs = (ns: string, cmd: string, args: readonly string[]) => [`--net=/run/netns/${ns}`, '--', cmd, ...args];

/** Runs a command inside a namespace (sysctl, nft), stdin optional. */
export async function netnsExec(ns: string, cmd: string, args: readonly string[], input?: string): Promise<void> {
  await run('nsenter', netnsExecArgs(ns, cmd, args), input === undefined ? {} : { input });
}

// A VM's serial console as users reach it: the log (tail and follow) and the interactive
// connection, shared by every attached client (console-mux.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { ConsoleFollower } from '../guest/console-follower.ts';
import type { ConsoleClient } from './console-mux.ts';
import type { LiveVm, VmCore } from './vm-core.ts';

export class VmConsole {
  constructor(private readonly core: VmCore) {}

  /** Bytes to the guest's serial input: through the shared connection while clients hold it. */
  async write(live: LiveVm, data: string | Buffer): Promise<void> {
    if (live.console?.write(data)) return;
    await live.instance.writeConsole(data);
  }

  /**
   * Attaches an interactive client to a running VM's serial console. Returns the function
   * that sends its keystrokes and the detach.
   */
  async attach(idOrName: string, client: ConsoleClient): Promise<{ write: (d: Buffer | string) => void; detach: () => void }> {
    const vm = await this.core.get(idOrName);
    const live = this.core.live.get(vm.id);
    if (!live) throw new KilnError('KILN_ERR_CONSOLE_UNAVAILABLE', `VM ${vm.id} is ${vm.state}: a console needs a running VM`);
    if (!live.console) {
      throw new KilnError('KILN_ERR_CONSOLE_UNAVAILABLE', `the ${vm.backend} backend has no interactive console for VM ${vm.id} (its serial output is in the log: kiln vm logs -f)`);
    }
    const mux = live.console;
    const detach = await mux.attach(client);
    return { write: (d) => void mux.write(d), detach };
  }

  async logs(idOrName: string, maxBytes = 1024 * 1024): Promise<string> {
    return this.core.consoleTail(await this.core.get(idOrName), maxBytes, 0);
  }

  /** Follows the console from its current end; returns the follower (caller closes it). */
  async follow(idOrName: string): Promise<ConsoleFollower> {
    const vm = await this.core.get(idOrName);
    const file = path.join(this.core.runtimeDir(vm.id), 'console.log');
    const size = (await fs.stat(file).catch(() => null))?.size;
    if (size === undefined) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${vm.id} has no console log (never booted or failed)`);
    return new ConsoleFollower(file, size);
  }
}

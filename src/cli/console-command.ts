// `kiln console VM`: the VM's serial console in this terminal (raw mode: keys go to the guest
// as typed, Ctrl-C included). Ctrl-] detaches, as with telnet and virsh; the VM keeps running.
import { Command } from 'commander';
import type { KilnClient } from '../sdk/client.ts';

/** Ctrl-] (GS, 0x1d). */
export const DETACH_BYTE = 0x1d;

/** Splits input at the detach key: what to send, and whether the user asked to leave. */
export function splitAtDetach(chunk: Buffer): { send: Buffer; detach: boolean } {
  const i = chunk.indexOf(DETACH_BYTE);
  return i < 0 ? { send: chunk, detach: false } : { send: chunk.subarray(0, i), detach: true };
}

export function consoleCommand(client: () => KilnClient): Command {
  return new Command('console')
    .argument('<vm>', 'id or name')
    .description('attach to a VM\'s serial console (Ctrl-] to detach)')
    .action(async (id: string) => {
      const ws = await client().console(id);
      const stdin = process.stdin;
      const tty = stdin.isTTY;
      process.stderr.write(`Connected to ${id}'s console. Escape character is ^] (Ctrl-]).\r\n`);
      if (tty) stdin.setRawMode(true);
      const done = new Promise<string | null>((resolve) => {
        ws.on('message', (data: Buffer) => process.stdout.write(data));
        ws.on('close', (_code, reason) => resolve(reason.toString() || null));
        ws.on('error', (e) => resolve(e.message));
        stdin.on('data', (chunk: Buffer) => {
          const { send, detach } = tty ? splitAtDetach(chunk) : { send: chunk, detach: false };
          if (send.length) ws.send(send);
          if (detach) ws.close(1000, 'detached');
        });
        // Piped input is sent as it comes; the session lasts until the console closes or ^C.
      });
      stdin.resume();
      const reason = await done;
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write(`\r\nDisconnected${reason && reason !== 'detached' ? `: ${reason}` : ''}.\r\n`);
      process.exit(0);
    });
}

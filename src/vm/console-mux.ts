// One interactive serial console connection per running VM, shared by every attached client.
// QEMU's console chardev (a Unix socket server with a logfile) serves one client at a time;
// kilnd holds that one connection while anyone is attached and fans the guest's output out to
// every client, and funnels their input (and kilnd's own `@kiln:stop`) into it. The log file
// is written by QEMU itself whether or not anyone is connected, so kiln's console follower
// (markers, readiness, logs) never depends on this connection.
import type net from 'node:net';

export interface ConsoleClient {
  /** Guest output, as raw bytes. */
  onData(chunk: Buffer): void;
  /** The console went away (VM stopped, VMM gone); the client should close. */
  onClose(reason: string): void;
}

export class ConsoleMux {
  private sock: net.Socket | null = null;
  private opening: Promise<net.Socket> | null = null;
  private readonly clients = new Set<ConsoleClient>();
  private closed = false;

  constructor(private readonly open: () => Promise<net.Socket>) {}

  get attached(): number {
    return this.clients.size;
  }

  /** Adds a client; connects to the VMM's console on the first one. Returns the detach. */
  async attach(c: ConsoleClient): Promise<() => void> {
    if (this.closed) throw new Error('console closed');
    await this.connection();
    this.clients.add(c);
    return () => this.detach(c);
  }

  private detach(c: ConsoleClient): void {
    if (!this.clients.delete(c)) return;
    // Nobody attached: give the socket back, so the VMM accepts kilnd's one-shot writes.
    if (this.clients.size === 0) this.disconnect();
  }

  /** True when the bytes went through the shared connection (else the caller writes itself). */
  write(data: string | Buffer): boolean {
    if (!this.sock || this.sock.destroyed) return false;
    this.sock.write(data);
    return true;
  }

  private connection(): Promise<net.Socket> {
    if (this.sock && !this.sock.destroyed) return Promise.resolve(this.sock);
    this.opening ??= this.open().then(
      (s) => {
        this.opening = null;
        this.sock = s;
        s.on('data', (d: Buffer) => {
          for (const c of this.clients) c.onData(d);
        });
        s.on('close', () => {
          if (this.sock === s) this.sock = null;
          // The VMM hung up on us: its console is gone (it exited or restarts the chardev).
          if (!this.closed) this.dropClients('the VM\'s console closed');
        });
        s.on('error', () => {});
        return s;
      },
      (e) => {
        this.opening = null;
        throw e;
      },
    );
    return this.opening;
  }

  private disconnect(): void {
    const s = this.sock;
    this.sock = null;
    s?.destroy();
  }

  /** The VM stopped: every client is told, the connection dropped. */
  close(reason: string): void {
    this.closed = true;
    this.dropClients(reason);
    this.disconnect();
  }

  private dropClients(reason: string): void {
    for (const c of [...this.clients]) {
      this.clients.delete(c);
      c.onClose(reason);
    }
  }
}

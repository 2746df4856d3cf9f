// Host side of Firecracker's hybrid vsock. Host → guest: connect to the device's Unix
// socket, send "CONNECT <port>\n", read "OK <host port>\n"; the connection is then the
// channel. Guest → host: Firecracker connects to "<uds_path>_<port>", where the host must
// listen. See firecracker-docs/vsock.md.
import fs from 'node:fs/promises';
import net from 'node:net';
import { KilnError } from '../../errors.ts';
import { assertSocketPathFits } from './vmm-process.ts';

const MAX_ACK = 64;

export interface VsockConnection {
  socket: net.Socket;
  /** The host-side port Firecracker assigned to this connection. */
  hostPort: number;
}

function vsockError(message: string, details: Record<string, unknown>, cause?: unknown): KilnError {
  return new KilnError('KILN_ERR_VMM_FAILED', message, details, cause === undefined ? undefined : { cause });
}

/** Opens a host-initiated connection to guest port `port`. */
export function connectVsock(
  udsPath: string,
  port: number,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<VsockConnection> {
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) {
    return Promise.reject(new KilnError('KILN_ERR_VALIDATION', `vsock port ${port} is not a 32-bit unsigned integer`));
  }
  const timeoutMs = opts.timeoutMs ?? 5000;
  return new Promise<VsockConnection>((resolve, reject) => {
    const socket = net.createConnection(udsPath);
    let acked = false;
    let buf = Buffer.alloc(0);
    const fail = (err: KilnError) => {
      if (acked) return;
      acked = true;
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onAbort = () => fail(vsockError(`vsock connect to port ${port} aborted`, { uds_path: udsPath, port }));
    const timer = setTimeout(
      () => fail(vsockError(`vsock: no answer to CONNECT ${port} within ${timeoutMs} ms`, { uds_path: udsPath, port })),
      timeoutMs,
    );
    const cleanup = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > MAX_ACK) fail(vsockError(`vsock: over-long handshake answer for port ${port}`, { uds_path: udsPath, port }));
        return;
      }
      const line = buf.subarray(0, nl).toString('latin1');
      const m = /^OK (\d+)$/.exec(line);
      if (!m) {
        fail(vsockError(`vsock: unexpected handshake answer for port ${port}: ${JSON.stringify(line)}`, { uds_path: udsPath, port }));
        return;
      }
      acked = true;
      cleanup();
      socket.pause();
      const rest = buf.subarray(nl + 1);
      if (rest.length) socket.unshift(rest);
      resolve({ socket, hostPort: Number(m[1]) });
    };
    const onError = (e: NodeJS.ErrnoException) =>
      fail(vsockError(`vsock: cannot connect to ${udsPath}: ${e.code ?? e.message}`, { uds_path: udsPath, port }, e));
    const onClose = () =>
      fail(vsockError(`vsock: Firecracker closed the connection to guest port ${port} (nothing listening there?)`, { uds_path: udsPath, port }));
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.once('connect', () => socket.write(`CONNECT ${port}\n`));
  });
}

/** Where Firecracker forwards guest-initiated connections to `port`. */
export function vsockListenPath(udsPath: string, port: number): string {
  return `${udsPath}_${port}`;
}

/**
 * Listens for guest-initiated connections to host port `port`. A stale socket file left by
 * an earlier listener is replaced; closing the server removes the file.
 */
export async function listenVsock(udsPath: string, port: number, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  const p = vsockListenPath(udsPath, port);
  assertSocketPathFits(p, 'vsock listener');
  await fs.rm(p, { force: true });
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // A jailed Firecracker (an unprivileged uid) dials it: connecting needs write permission.
  // The socket's directory (the VM's, or its jail's vsock dir) is what keeps others out.
  await fs.chmod(p, 0o666);
  return server;
}

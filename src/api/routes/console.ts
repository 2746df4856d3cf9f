// The interactive serial console over WebSocket: binary frames both ways (guest output out,
// keystrokes in), raw bytes with no framing of kiln's own. Refusals (no such VM, not running,
// a backend without a console socket) are answered before the upgrade, as JSON errors.
import type { FastifyInstance } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import { STREAM_BUFFER_MAX } from '../bounded-stream.ts';
import { KilnError } from '../../errors.ts';
import { ErrorBody, IdParams } from '../schemas.ts';

export function registerConsoleRoutes(app: FastifyInstance, daemon: Daemon): void {
  app.get<{ Params: { id: string } }>('/v1/vms/:id/console', {
    websocket: true,
    schema: {
      summary: 'Interactive serial console (WebSocket; binary frames: guest output out, input in)',
      description: 'Several clients may attach; each sees all output and may type. The console log (GET …/logs) is written whether or not anyone is attached.',
      tags: ['vms'], params: IdParams,
      response: { 404: ErrorBody, 409: ErrorBody },
    },
    preValidation: async (req) => {
      const vm = await daemon.vms.get(req.params.id);
      if (!['booting', 'ready', 'paused', 'stopping'].includes(vm.state)) {
        throw new KilnError('KILN_ERR_CONSOLE_UNAVAILABLE', `VM ${vm.id} is ${vm.state}: a console needs a running VM`);
      }
    },
  }, async (socket, req) => {
    let conn: { write: (d: Buffer) => void; detach: () => void } | null = null;
    let closed = false;
    // Keystrokes can arrive before the console connection is made: keep them, in order.
    const early: Buffer[] = [];
    socket.on('message', (data: Buffer | Buffer[] | ArrayBuffer) => {
      const b = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      if (conn) conn.write(b);
      else if (early.length < 1024) early.push(b);
    });
    socket.on('close', () => {
      closed = true;
      conn?.detach();
    });
    try {
      const c = await daemon.vms.attachConsole(req.params.id, {
        onData: (chunk) => {
          // A viewer that does not read is dropped rather than buffered for (1008: policy).
          if (socket.bufferedAmount > STREAM_BUFFER_MAX) socket.terminate();
          else socket.send(chunk, { binary: true });
        },
        onClose: (reason) => socket.close(1000, reason.slice(0, 120)),
      });
      if (closed) return c.detach();
      for (const b of early.splice(0)) c.write(b);
      conn = c;
    } catch (e) {
      // 1011: the server met a condition that prevented it from fulfilling the request.
      socket.close(1011, (e instanceof KilnError ? `${e.code}: ${e.message}` : (e as Error).message).slice(0, 120));
    }
  });
}

// A request body over the route's limit gets its 413 reliably. Fastify answers it with
// `Connection: close` without reading the body; Node then closes the socket with the client's
// bytes unread, the kernel answers them with a reset, and a client still sending sees EPIPE or
// ECONNRESET instead of the 413 (seen as `fetch failed` from undici). Keeping the connection
// open and reading the rest of the body lets every client read the answer: undici and curl stop
// sending once they have it, and the connection stays usable. The discarding is bounded in
// bytes and time, so a client cannot make kilnd read an endless body.
import type { FastifyReply, FastifyRequest } from 'fastify';

/** Bytes past the limit read and thrown away, as a multiple of the route's limit… */
export const DRAIN_FACTOR = 4;
/** …and at most this many, whatever the limit (the image upload's is 16 GiB). */
export const DRAIN_MAX_BYTES = 64 * 1024 * 1024;
/** Past the byte bound, how long a client gets to read its 413 before the connection is cut. */
export const CUT_GRACE_MS = 2_000;
/** A client that trickles the rest is cut off after this long. */
export const DRAIN_MAX_MS = 30_000;

/**
 * Called before the 413 is sent: lets Node keep the connection and discards what the client
 * still sends, up to the bounds; past them the connection is cut (after CUT_GRACE_MS
 * past the byte bound).
 */
export function drainOversizedBody(req: FastifyRequest, reply: FastifyReply): void {
  const raw = req.raw;
  reply.removeHeader('connection');
  if (raw.complete || raw.destroyed) return;
  const bound = Math.min(DRAIN_FACTOR * req.routeOptions.bodyLimit, DRAIN_MAX_BYTES);
  let discarded = 0;
  const cut = () => {
    done();
    raw.socket?.destroy();
  };
  const onData = (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded <= bound) return;
    // Past the bound: read no more (the client's writes stall on TCP's window, costing
    // nothing here), and cut a moment later. A client that is merely slow to notice the 413
    // (a busy host) reads it in that moment and stops; destroyed at once, it got a reset.
    done();
    raw.pause();
    setTimeout(() => raw.socket?.destroy(), CUT_GRACE_MS).unref();
  };
  const timer = setTimeout(cut, DRAIN_MAX_MS).unref();
  const done = () => {
    clearTimeout(timer);
    raw.off('data', onData);
    raw.off('end', done);
    raw.off('close', done);
  };
  raw.on('data', onData);
  raw.once('end', done);
  raw.once('close', done);
  // Fastify stopped reading at the limit (or never started): flowing again, the body is read
  // and dropped; Node's keep-alive then parses the connection's next request after it.
  raw.resume();
}

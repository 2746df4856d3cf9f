// A loopback port nothing listens on right now, for servers the tests cannot ask to pick
// their own (a published VM port, docker-registry). Another process may take it before the
// test does; callers that can retry on a bind failure do.
import net from 'node:net';

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

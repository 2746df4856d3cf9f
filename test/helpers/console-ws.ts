// Reading a VM's console WebSocket in tests: what arrived once a pattern matches, bounded.
import type WebSocket from 'ws';

/** Resolves with what the WebSocket received once `re` matches it; rejects after `ms`. */
export function readUntil(ws: WebSocket, re: RegExp, ms = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (b: Buffer) => {
      text += b.toString('utf8');
      if (re.test(text)) done(null);
    };
    const done = (err: Error | null) => {
      clearTimeout(t);
      ws.off('message', onData);
      if (err) reject(err);
      else resolve(text);
    };
    const t = setTimeout(() => done(new Error(`console: no ${re} within ${ms} ms; got ${JSON.stringify(text.slice(-500))}`)), ms);
    ws.on('message', onData);
  });
}

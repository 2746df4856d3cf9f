// `kiln images pull`: one progress bar per layer while downloading (cli-progress), then the
// flatten and build phases, all driven by the daemon's image.* events over SSE.
import cliProgress from 'cli-progress';
import type { Image, KilnClient, KilnEvent } from '../sdk/client.ts';
import { KilnApiError } from '../sdk/client.ts';
import { bytes } from './output.ts';

export async function pullWithProgress(client: KilnClient, body: { ref: string; insecure?: boolean; format?: 'squashfs' | 'erofs' | 'ext4' }, quiet: boolean): Promise<Image> {
  const abort = new AbortController();
  // Subscribed before the POST, so no progress event can fall in between.
  const events = await client.subscribe({ signal: abort.signal });
  try {
    const first = await client.pullImage(body);
    if (first.state === 'ready') return first;
    const tty = process.stderr.isTTY && !quiet;
    const multi = new cliProgress.MultiBar({
      stream: process.stderr,
      format: ' {label} |{bar}| {value_h}/{total_h}',
      hideCursor: true,
      clearOnComplete: false,
      noTTYOutput: false,
      barsize: 30,
    }, cliProgress.Presets.shades_classic);
    const bars = new Map<string, cliProgress.SingleBar>();
    const bar = (key: string, label: string, total: number) => {
      let b = bars.get(key);
      if (!b) {
        b = multi.create(Math.max(total, 1), 0, { label: label.padEnd(19), value_h: '0 B', total_h: bytes(total) });
        bars.set(key, b);
      }
      return b;
    };
    const note = (line: string) => (tty ? multi.log(`${line}\n`) : !quiet && process.stderr.write(`${line}\n`));
    let lastPhase = '';
    try {
      for await (const e of events as AsyncGenerator<KilnEvent & Record<string, never>>) {
        if (e.id !== first.id) continue;
        const ev = e as unknown as Record<string, unknown>;
        if (e.type === 'image.progress') {
          const phase = String(ev.phase);
          if (phase === 'download' && tty) {
            const layer = String(ev.layer);
            const total = Number(ev.total);
            bar(layer, layer.slice(7, 19) + (ev.cached ? ' (cached)' : ''), total).update(Number(ev.bytes), { value_h: bytes(Number(ev.bytes)), total_h: bytes(total) });
          } else if (phase === 'flatten' && tty) {
            bar('flatten', 'flatten layers', Number(ev.layers)).update(Number(ev.layer), { value_h: `${ev.layer} layers`, total_h: `${ev.layers} (${ev.entries} files, ${bytes(Number(ev.bytes))})` });
          } else if (phase !== lastPhase) {
            note(phase === 'build' ? `building ${ev.format} root filesystem` : `${phase}${ev.message ? `: ${ev.message}` : ''}`);
          }
          lastPhase = phase;
        } else if (e.type === 'image.created') {
          for (const b of bars.values()) b.update(b.getTotal());
          return await client.getImage(first.id);
        } else if (e.type === 'image.failed') {
          throw new KilnApiError(0, String(ev.code), String(ev.message));
        }
      }
      throw new Error('the event stream ended before the pull finished');
    } finally {
      multi.stop();
    }
  } finally {
    abort.abort();
  }
}

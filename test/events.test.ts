// /v1/events against a real kilnd (no VM needed: image GC runs publish an event each): the
// replay after `since` or `Last-Event-ID` comes oldest first, across more than one page, and
// live events follow it with no gap and no duplicate.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { KilnEvent } from '../src/sdk/client.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';

let d: TestDaemon;
before(async () => {
  d = await startKilnd();
});
after(() => d?.dispose());

/** Reads SSE events from a raw fetch until `n` arrived (deadline 30 s). */
async function read(res: Response, n: number): Promise<{ id: string | null; e: KilnEvent }[]> {
  const out: { id: string | null; e: KilnEvent }[] = [];
  const decoder = new TextDecoder();
  let buf = '';
  const deadline = setTimeout(() => void res.body?.cancel(), 30_000);
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let sep: number;
      while ((sep = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, sep).split('\n');
        buf = buf.slice(sep + 2);
        const data = block.find((l) => l.startsWith('data: '));
        if (!data) continue;
        out.push({ id: block.find((l) => l.startsWith('id: '))?.slice(4) ?? null, e: JSON.parse(data.slice(6)) as KilnEvent });
        if (out.length === n) return out;
      }
    }
  } finally {
    clearTimeout(deadline);
  }
  throw new Error(`the stream ended after ${out.length} of ${n} events`);
}

test('a replay across several pages is complete and ascending, then live events follow without duplicates', async () => {
  const start = await d.client.subscribe({});
  const it = start[Symbol.asyncIterator]();
  await d.client.gcImages();
  const mark = (await it.next()).value as KilnEvent;
  await it.return?.(undefined);
  // 1200 more events: more than two replay pages.
  for (let i = 0; i < 1200; i++) await d.client.gcImages();
  const res = await fetch(`${d.url}/v1/events?since=${mark.seq}`, { headers: d.authHeaders });
  const replay = read(res, 1201);
  await new Promise((r) => setTimeout(r, 200));
  await d.client.gcImages(); // live, after the replay began
  const got = await replay;
  const seqs = got.map((g) => Number(g.e.seq));
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1, `contiguous at ${i}: ${seqs[i - 1]} → ${seqs[i]}`);
  assert.equal(seqs[0], Number(mark.seq) + 1);
  assert.ok(got.every((g) => g.e.type === 'image.gc' && g.id === String(g.e.seq)));
});

test('Last-Event-ID resumes like ?since', async () => {
  const it = (await d.client.subscribe({}))[Symbol.asyncIterator]();
  await d.client.gcImages();
  const mark = (await it.next()).value as KilnEvent;
  await it.return?.(undefined);
  await d.client.gcImages();
  await d.client.gcImages();
  const res = await fetch(`${d.url}/v1/events`, { headers: { ...d.authHeaders, 'last-event-id': String(mark.seq) } });
  const got = await read(res, 2);
  assert.deepEqual(got.map((g) => Number(g.e.seq)), [Number(mark.seq) + 1, Number(mark.seq) + 2]);
});

test('events retention already removed: the replay starts with a gap event naming the missing range', async () => {
  const small = await startKilnd({ env: { KILN_EVENTS_KEEP_TOTAL: '100' } });
  try {
    for (let i = 0; i < 300; i++) await small.client.gcImages();
    const res = await fetch(`${small.url}/v1/events?since=1`, { headers: small.authHeaders });
    const [gap, next] = await read(res, 2);
    assert.equal(gap!.e.type, 'gap');
    const { from, to } = gap!.e as unknown as { from: number; to: number };
    assert.equal(from, 2);
    assert.ok(to > 150, `retention removed the oldest events (gap to ${to})`);
    assert.equal(Number(next!.e.seq), to + 1, 'the replay resumes right after the gap');
    assert.equal(gap!.id, null, 'a gap has no id: Last-Event-ID stays at the last real event');
  } finally {
    await small.dispose();
  }
});

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ContainerLog, renderLog, type LogRecord } from './container-log.ts';

const piece = (boot: number, seq: number, text: string, stream: 'stdout' | 'stderr' = 'stdout', partial = false) => ({ boot, seq, text, stream, partial });

const dirs: string[] = [];
async function tmp(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-clog-'));
  dirs.push(dir);
  return dir;
}
after(async () => {
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

test('keeps pieces in order, drops a replay of pieces already stored (also after reopening)', async () => {
  const dir = await tmp();
  const log = await ContainerLog.open(dir);
  log.append(piece(1, 0, 'a'));
  log.append(piece(1, 1, 'b', 'stderr'));
  log.append(piece(1, 0, 'a'));
  await log.settle();
  const again = await ContainerLog.open(dir);
  again.append(piece(1, 1, 'b'));
  again.append(piece(1, 2, 'c'));
  again.append(piece(2, 0, 'next boot'));
  const recs = await again.read();
  assert.deepEqual(recs.map((r) => [r.boot, r.seq, r.stream, r.text]), [
    [1, 0, 'stdout', 'a'], [1, 1, 'stderr', 'b'], [1, 2, 'stdout', 'c'], [2, 0, 'stdout', 'next boot'],
  ]);
  assert.deepEqual((await again.read(2)).map((r) => r.text), ['c', 'next boot']);
});

test('bounded: rotation keeps at most the byte budget, newest records kept', async () => {
  const dir = await tmp();
  const log = await ContainerLog.open(dir, 64 * 1024);
  for (let i = 0; i < 2000; i++) log.append(piece(1, i, `line ${i} ${'x'.repeat(100)}`));
  await log.settle();
  let total = 0;
  for (const f of await fs.readdir(dir)) total += (await fs.stat(path.join(dir, f))).size;
  assert.ok(total <= 64 * 1024 + 200, `${total} bytes on disk`);
  const recs = await log.read();
  assert.equal(recs.at(-1)!.seq, 1999);
  assert.ok(recs.length < 2000 && recs.length > 100);
  for (let i = 1; i < recs.length; i++) assert.equal(recs[i]!.seq, recs[i - 1]!.seq + 1);
});

test('follow: backlog then live records, no gap and no repeat', async () => {
  const log = await ContainerLog.open(await tmp());
  log.append(piece(1, 0, 'old'));
  const got: string[] = [];
  const stop = await log.follow((r) => got.push(r.text));
  log.append(piece(1, 1, 'new'));
  stop();
  log.append(piece(1, 2, 'after stop'));
  assert.deepEqual(got, ['old', 'new']);
});

test('render: partial pieces join their line; timestamps once per line', () => {
  const recs: LogRecord[] = [
    { ts: Date.UTC(2026, 0, 1), stream: 'stdout', text: 'prompt> ', partial: true, boot: 1, seq: 0 },
    { ts: Date.UTC(2026, 0, 1), stream: 'stdout', text: 'answer', partial: false, boot: 1, seq: 1 },
    { ts: Date.UTC(2026, 0, 1), stream: 'stderr', text: 'err', partial: false, boot: 1, seq: 2 },
  ];
  assert.equal(renderLog(recs, false), 'prompt> answer\nerr\n');
  assert.equal(renderLog(recs, true), '2026-01-01T00:00:00.000Z prompt> answer\n2026-01-01T00:00:00.000Z err\n');
});

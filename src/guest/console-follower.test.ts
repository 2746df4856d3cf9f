// The console follower against a real file written the way the VMM writes it (O_APPEND).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ConsoleFollower } from './console-follower.ts';

test('rotation keeps console.log and console.log.1 under twice the threshold and loses no paced line', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-console-'));
  const file = path.join(dir, 'console.log');
  const fd = fs.openSync(file, 'a'); // the VMM's logappend=on
  const f = new ConsoleFollower(file, 0, { rotateAtBytes: 20_000 });
  const lines: string[] = [];
  let rotations = 0;
  let maxTotal = 0;
  f.on('line', (l) => lines.push(l));
  f.on('rotated', () => rotations++);
  f.start();
  try {
    for (let i = 0; i < 400; i++) {
      fs.writeSync(fd, `line ${i} ${'x'.repeat(490)}\n`);
      if (i % 10 === 9) {
        await f.drain();
        const size = (p: string) => fs.statSync(p, { throwIfNoEntry: false })?.size ?? 0;
        maxTotal = Math.max(maxTotal, size(file) + size(`${file}.1`));
      }
    }
    await f.drain();
    assert.ok(rotations >= 8, `rotations ${rotations}`);
    assert.ok(maxTotal <= 2 * 20_000 + 64 * 1024, `on disk ${maxTotal}`);
    assert.equal(lines.length, 400);
    assert.deepEqual(lines.map((l) => Number(l.split(' ')[1])), [...Array(400).keys()], 'every line once, in order');
    // Another follower started before a rotation notices the truncation and starts over.
    const g = new ConsoleFollower(file, fs.statSync(file).size);
    const seen: string[] = [];
    g.on('line', (l) => seen.push(l));
    g.start();
    fs.writeSync(fd, `${'y'.repeat(30_000)}\nafter\n`);
    await f.drain();
    fs.writeSync(fd, 'after2\n');
    await f.drain();
    const deadline = Date.now() + 5000;
    while (!seen.includes('after2') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    g.close();
    assert.ok(seen.includes('after2'), `the second follower saw ${JSON.stringify(seen.map((s) => s.slice(0, 10)))}`);
  } finally {
    f.close();
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

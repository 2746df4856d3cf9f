// kiln-init's SHA-256/HMAC-SHA256 (src/guest/kiln-init/auth.c) against Node's crypto: RFC 4231
// vectors, every key length around the 64-byte block (hashed-key path included) and message
// lengths across the padding boundaries, fed in uneven pieces.
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { run } from '../util/process.ts';
import { KILN_INIT_DIR } from './kiln-init-build.ts';

// Reads lines "<key hex> <msg hex> <split>" and prints "<hmac hex> <sha256(msg) hex>" for each;
// the message goes through hmac_update/sha256_update in two pieces cut at <split>.
const DRIVER = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "auth.h"
static unsigned char key[1024], msg[4096];
static size_t unhex(unsigned char *out, const char *s) {
	size_t n = strlen(s) / 2;
	for (size_t i = 0; i < n; i++) { unsigned v; sscanf(s + 2 * i, "%2x", &v); out[i] = (unsigned char)v; }
	return n;
}
int main(void) {
	static char kh[2100], mh[8200];
	size_t split;
	while (scanf("%2099s %8199s %zu", kh, mh, &split) == 3) {
		size_t kn = strcmp(kh, "-") ? unhex(key, kh) : 0, mn = strcmp(mh, "-") ? unhex(msg, mh) : 0;
		unsigned char out[32], dig[32];
		char a[65], b[65];
		struct hmac m;
		struct sha256 s;
		if (split > mn) split = mn;
		hmac_init(&m, key, kn);
		hmac_update(&m, msg, split);
		hmac_update(&m, msg + split, mn - split);
		hmac_final(&m, out);
		sha256_init(&s);
		sha256_update(&s, msg, split);
		sha256_update(&s, msg + split, mn - split);
		sha256_final(&s, dig);
		hex_encode(a, out, 32);
		hex_encode(b, dig, 32);
		printf("%s %s\\n", a, b);
	}
	return 0;
}
`;

let dir = '';
let bin = '';

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-auth-'));
  await fs.writeFile(path.join(dir, 'driver.c'), DRIVER);
  bin = path.join(dir, 'driver');
  await run('cc', ['-Os', '-Wall', '-Wextra', '-Werror', '-I', KILN_INIT_DIR, '-o', bin, path.join(dir, 'driver.c'), path.join(KILN_INIT_DIR, 'auth.c')]);
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function cHmac(cases: { key: Buffer; msg: Buffer; split: number }[]): Promise<{ hmac: string; sha: string }[]> {
  const input = cases.map((c) => `${c.key.length ? c.key.toString('hex') : '-'} ${c.msg.length ? c.msg.toString('hex') : '-'} ${c.split}\n`).join('');
  const { stdout } = await run(bin, [], { input });
  return stdout
    .trim()
    .split('\n')
    .map((l) => {
      const [hmac = '', sha = ''] = l.split(' ');
      return { hmac, sha };
    });
}

test('RFC 4231 test cases 1, 2, 6 and 7', async () => {
  const cases = [
    { key: Buffer.alloc(20, 0x0b), msg: Buffer.from('Hi There'), want: 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7' },
    { key: Buffer.from('Jefe'), msg: Buffer.from('what do ya want for nothing?'), want: '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843' },
    {
      key: Buffer.alloc(131, 0xaa),
      msg: Buffer.from('Test Using Larger Than Block-Size Key - Hash Key First'),
      want: '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
    },
    {
      key: Buffer.alloc(131, 0xaa),
      msg: Buffer.from('This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.'),
      want: '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2',
    },
  ];
  const got = await cHmac(cases.map((c) => ({ ...c, split: 3 })));
  assert.deepEqual(got.map((g) => g.hmac), cases.map((c) => c.want));
});

test('matches Node for key lengths 0..140 and message lengths across block and padding boundaries', async () => {
  const cases: { key: Buffer; msg: Buffer; split: number }[] = [];
  for (let k = 0; k <= 140; k += 1) cases.push({ key: randomBytes(k), msg: randomBytes(k * 7 % 200), split: k % 13 });
  for (const m of [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4000]) {
    cases.push({ key: randomBytes(64), msg: randomBytes(m), split: Math.floor(m / 3) });
  }
  const got = await cHmac(cases);
  assert.equal(got.length, cases.length);
  cases.forEach((c, i) => {
    assert.equal(got[i]!.hmac, createHmac('sha256', c.key).update(c.msg).digest('hex'), `hmac: key ${c.key.length} B, message ${c.msg.length} B`);
    assert.equal(got[i]!.sha, createHash('sha256').update(c.msg).digest('hex'), `sha256 of ${c.msg.length} B`);
  });
});

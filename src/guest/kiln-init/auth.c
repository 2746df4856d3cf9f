/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the agent's challenge-response
 * (docs/agent-protocol.md, "Authentication"): the guest has no libcrypto, and these ~150
 * lines are all the cryptography it needs. Tested against Node's crypto
 * (src/guest/kiln-init-auth.test.ts). Self-contained: no other kiln-init symbol is used,
 * so the test can compile this file alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include "auth.h"

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(struct sha256 *s, const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
	e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));

		h = g, g = f, f = e, e = d + t1;
		d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

void sha256_init(struct sha256 *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };

	memcpy(s->h, iv, sizeof(iv));
	s->len = 0;
	s->fill = 0;
}

void sha256_update(struct sha256 *s, const void *data, size_t n)
{
	const unsigned char *p = data;

	s->len += n;
	while (n > 0) {
		size_t take = 64 - s->fill < n ? 64 - s->fill : n;

		memcpy(s->buf + s->fill, p, take);
		s->fill += take, p += take, n -= take;
		if (s->fill == 64) {
			sha256_block(s, s->buf);
			s->fill = 0;
		}
	}
}

void sha256_final(struct sha256 *s, unsigned char out[32])
{
	uint64_t bits = s->len * 8;
	unsigned char pad = 0x80, zero = 0, len[8];

	sha256_update(s, &pad, 1);
	while (s->fill != 56)
		sha256_update(s, &zero, 1);
	for (int i = 0; i < 8; i++)
		len[i] = (unsigned char)(bits >> (56 - 8 * i));
	sha256_update(s, len, 8);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (unsigned char)(s->h[i] >> 24);
		out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
		out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
		out[4 * i + 3] = (unsigned char)s->h[i];
	}
}

void hmac_init(struct hmac *m, const void *key, size_t keylen)
{
	unsigned char k[64] = { 0 }, pad[64];

	if (keylen > 64) {
		struct sha256 s;

		sha256_init(&s);
		sha256_update(&s, key, keylen);
		sha256_final(&s, k);
	} else {
		memcpy(k, key, keylen);
	}
	for (int i = 0; i < 64; i++)
		pad[i] = k[i] ^ 0x36;
	sha256_init(&m->inner);
	sha256_update(&m->inner, pad, 64);
	for (int i = 0; i < 64; i++)
		pad[i] = k[i] ^ 0x5c;
	sha256_init(&m->outer);
	sha256_update(&m->outer, pad, 64);
}

void hmac_update(struct hmac *m, const void *data, size_t n)
{
	sha256_update(&m->inner, data, n);
}

void hmac_final(struct hmac *m, unsigned char out[32])
{
	unsigned char ih[32];

	sha256_final(&m->inner, ih);
	sha256_update(&m->outer, ih, 32);
	sha256_final(&m->outer, out);
}

void hex_encode(char *out, const unsigned char *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = 0;
}

int hex_decode(unsigned char *out, size_t n, const char *in)
{
	if (strlen(in) != 2 * n)
		return -1;
	for (size_t i = 0; i < 2 * n; i++) {
		char c = in[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;

		if (v < 0)
			return -1;
		out[i / 2] = (unsigned char)(i % 2 ? out[i / 2] << 4 | v : v);
	}
	return 0;
}

int ct_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
	unsigned char d = 0;

	for (size_t i = 0; i < n; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004
#endif

/*
 * A nonce that must never repeat: the kernel's CRNG, hashed together with clocks, the pid
 * and whatever the caller adds. A restored clone resumes its template's CRNG state until the
 * identity op reseeds it, and the identity op itself runs before that reseed: the clocks
 * (monotonic nanoseconds differ between clones) keep clones' nonces apart meanwhile.
 */
void auth_nonce(unsigned char out[32], const void *extra, size_t n)
{
	unsigned char rnd[32] = { 0 };
	struct timespec t[3];
	pid_t pid = getpid();
	struct sha256 s;
	ssize_t got = getrandom(rnd, sizeof(rnd), GRND_NONBLOCK);

	/*
	 * Early in boot the CRNG may not be initialised yet. Not /dev/urandom then: from Linux 5.18
	 * a read of it before the CRNG is ready first runs the jitter-entropy loop, about a second
	 * under emulation, on the path to ready. GRND_INSECURE (5.6+) gives the best bytes there
	 * are without waiting; uniqueness comes from the clocks and pid hashed in below anyway.
	 */
	if (got != (ssize_t)sizeof(rnd) && errno == EAGAIN)
		got = getrandom(rnd, sizeof(rnd), GRND_INSECURE);
	if (got != (ssize_t)sizeof(rnd) && (errno == EINVAL || errno == ENOSYS)) {
		int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

		if (fd >= 0) {
			if (read(fd, rnd, sizeof(rnd)) < 0)
				rnd[0] ^= (unsigned char)errno;
			close(fd);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t[0]);
	clock_gettime(CLOCK_REALTIME, &t[1]);
	clock_gettime(CLOCK_BOOTTIME, &t[2]);
	sha256_init(&s);
	sha256_update(&s, rnd, sizeof(rnd));
	sha256_update(&s, t, sizeof(t));
	sha256_update(&s, &pid, sizeof(pid));
	sha256_update(&s, extra, n);
	sha256_final(&s, out);
}

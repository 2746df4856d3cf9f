/* SHA-256, HMAC-SHA256 and nonces for agent authentication (auth.c). */
#ifndef KILN_AUTH_H
#define KILN_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
	uint32_t h[8];
	uint64_t len;
	unsigned char buf[64];
	size_t fill;
};
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
void sha256_final(struct sha256 *s, unsigned char out[32]);

struct hmac {
	struct sha256 inner, outer;
};
void hmac_init(struct hmac *m, const void *key, size_t keylen);
void hmac_update(struct hmac *m, const void *data, size_t n);
void hmac_final(struct hmac *m, unsigned char out[32]);

/* out: 2n+1 bytes. */
void hex_encode(char *out, const unsigned char *in, size_t n);
/* Exactly 2n lowercase hex digits, else -1. */
int hex_decode(unsigned char *out, size_t n, const char *in);
/* Constant time in n. */
int ct_equal(const unsigned char *a, const unsigned char *b, size_t n);
void auth_nonce(unsigned char out[32], const void *extra, size_t n);

/* Labels bound into every proof, so a proof made for one purpose is useless for another. */
#define AUTH_NONCE_BYTES 32
#define AUTH_LABEL_GUEST "kiln-agent-v2 session guest"
#define AUTH_LABEL_HOST "kiln-agent-v2 session host"
#define AUTH_LABEL_HELLO "kiln-agent-v2 hello"

#endif

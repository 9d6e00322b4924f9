// ESP (RFC 4303) with AES-GCM (RFC 4106, `conf`) or AES-GMAC (RFC 4543, `auth`) for whole bursts,
// on OpenSSL's EVP: the per-packet loops of gatekeeper/vnet/esp_batch.py in C.
//
// The wire format is softudc/wire/esp.py's, byte for byte: SPI | seq low | IV (the 64-bit sequence
// number) | payload | padding 1, 2, 3 | pad length | next header 97 | 16-byte tag; nonce = salt | IV;
// AAD = SPI | seq high | seq low (extended sequence numbers). Every packet keeps its own sequence
// number, nonce, AAD and tag: one AEAD operation per datagram, only the calls around it are batched.
//
// One esp_key per SA and direction in use: the key schedule is set once (EVP_CIPHER_CTX per
// direction), each packet only sets its nonce. A key is not thread-safe: the caller serialises.
// Every length comes from the caller (Python) and every length read from a packet is bounded by
// the buffer it arrived in; nothing here allocates per packet.
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ESP_HDR 8      // SPI + sequence low
#define ESP_BODY 16    // + explicit IV: where the (cipher)text starts
#define ESP_ICV 16
#define ESP_OVERHEAD (ESP_BODY + ESP_ICV)
#define ESP_MAX 65535  // no ESP-in-UDP datagram is longer
#define NEXT_HEADER_ETHERIP 97

// Results below zero (esp_batch.py maps each to its exception).
#define ESP_E_AUTH (-1)      // the tag does not verify
#define ESP_E_SHORT (-2)     // shorter than the smallest ESP packet, or longer than any
#define ESP_E_ALIGN (-3)     // encrypted part not a multiple of 4 bytes
#define ESP_E_SEQ (-4)       // sequence number (low bits) or SPI not the one expected
#define ESP_E_NEXT (-5)      // next header is not EtherIP
#define ESP_E_PAD (-6)       // padding is not 1, 2, 3, ...
#define ESP_E_ROOM (-7)      // the caller's output buffer is too small
#define ESP_E_CRYPTO (-8)    // OpenSSL refused a call (not expected)
#define ESP_E_ARG (-9)       // lengths that do not fit together

struct esp_key {
	EVP_CIPHER_CTX *enc;
	EVP_CIPHER_CTX *dec;
	uint8_t salt[4];
	int conf;  // 1: AES-GCM (payload encrypted), 0: AES-GMAC (payload authenticated only)
};

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static size_t padded_len(size_t len)
{
	return (len + 2 + 3) & ~(size_t)3;
}

static const EVP_CIPHER *gcm_for(int keylen)
{
	switch (keylen) {
	case 16: return EVP_aes_128_gcm();
	case 24: return EVP_aes_192_gcm();
	case 32: return EVP_aes_256_gcm();
	default: return NULL;
	}
}

static EVP_CIPHER_CTX *ctx_new(const EVP_CIPHER *cipher, const uint8_t *key, int encrypt)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		return NULL;
	if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, encrypt) != 1
	    || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1
	    || EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, encrypt) != 1) {
		EVP_CIPHER_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

void esp_key_free(struct esp_key *k)
{
	if (k == NULL)
		return;
	EVP_CIPHER_CTX_free(k->enc);
	EVP_CIPHER_CTX_free(k->dec);
	OPENSSL_cleanse(k, sizeof(*k));
	free(k);
}

// A key for one SA: `keylen` 16, 24 or 32 bytes, a 4-byte salt; NULL on a bad length or no memory.
struct esp_key *esp_key_new(const uint8_t *key, int keylen, const uint8_t *salt, int conf)
{
	const EVP_CIPHER *cipher = gcm_for(keylen);
	struct esp_key *k;

	if (cipher == NULL || key == NULL || salt == NULL)
		return NULL;
	k = calloc(1, sizeof(*k));
	if (k == NULL)
		return NULL;
	k->enc = ctx_new(cipher, key, 1);
	k->dec = ctx_new(cipher, key, 0);
	if (k->enc == NULL || k->dec == NULL) {
		esp_key_free(k);
		return NULL;
	}
	memcpy(k->salt, salt, 4);
	k->conf = conf != 0;
	return k;
}

static void nonce_aad(const struct esp_key *k, uint32_t spi, uint64_t seq, const uint8_t *iv,
		      uint8_t nonce[12], uint8_t aad[12])
{
	memcpy(nonce, k->salt, 4);
	memcpy(nonce + 4, iv, 8);
	put32(aad, spi);
	put32(aad + 4, (uint32_t)(seq >> 32));
	put32(aad + 8, (uint32_t)seq);
}

// A packet's start: its trailer's last two bytes (pad length, next header) into trailer[pad..],
// the ESP header with its IV (the sequence number) at out, and the cipher started with its nonce and
// AAD. Returns 0, or ESP_E_CRYPTO.
static int begin_seal(struct esp_key *k, uint32_t spi, uint64_t seq, uint8_t *out, uint8_t trailer[5], size_t pad)
{
	uint8_t nonce[12], aad[12];
	int n;

	trailer[pad] = (uint8_t)pad;
	trailer[pad + 1] = NEXT_HEADER_ETHERIP;
	put32(out, spi);
	put32(out + 4, (uint32_t)seq);
	put32(out + 8, (uint32_t)(seq >> 32));
	put32(out + 12, (uint32_t)seq);
	nonce_aad(k, spi, seq, out + ESP_HDR, nonce, aad);
	if (EVP_EncryptInit_ex(k->enc, NULL, NULL, NULL, nonce) != 1 || EVP_EncryptUpdate(k->enc, NULL, &n, aad, 12) != 1)
		return ESP_E_CRYPTO;
	return 0;
}

// One packet: `len` payload bytes at `payload` sealed under `seq` into out[0 : ESP_OVERHEAD +
// padded_len(len)]; returns that length. `out` must not overlap `payload`.
static long seal_one(struct esp_key *k, uint32_t spi, uint64_t seq, const uint8_t *payload, size_t len,
		     uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = k->enc;
	size_t plen = padded_len(len);
	size_t pad = plen - len - 2;
	uint8_t trailer[5] = {1, 2, 3, 0, 0};
	uint8_t *body = out + ESP_BODY;
	int n;

	if (begin_seal(k, spi, seq, out, trailer, pad) != 0)
		return ESP_E_CRYPTO;
	if (k->conf) {
		if (len && (EVP_EncryptUpdate(ctx, body, &n, payload, (int)len) != 1 || (size_t)n != len))
			return ESP_E_CRYPTO;
		if (EVP_EncryptUpdate(ctx, body + len, &n, trailer, (int)(pad + 2)) != 1 || (size_t)n != pad + 2)
			return ESP_E_CRYPTO;
	} else {  // GMAC: AAD | IV | payload | trailer authenticated, nothing encrypted
		if (len)
			memcpy(body, payload, len);
		memcpy(body + len, trailer, pad + 2);
		if (EVP_EncryptUpdate(ctx, NULL, &n, out + ESP_HDR, 8) != 1
		    || EVP_EncryptUpdate(ctx, NULL, &n, body, (int)plen) != 1)
			return ESP_E_CRYPTO;
	}
	if (EVP_EncryptFinal_ex(ctx, body + plen, &n) != 1 || n != 0
	    || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ESP_ICV, body + plen) != 1)
		return ESP_E_CRYPTO;
	return (long)(ESP_OVERHEAD + plen);
}

// Seal a burst: payload k is rows[k * width : k * width + len] (the last one `len_last` bytes,
// len_last <= len), sealed under seq0 + k into out[k * ostride:], ostride >= ESP_OVERHEAD +
// padded_len(len), `out_cap` bytes in all. Returns the bytes used (the last packet may be shorter
// than ostride), or an ESP_E_* below zero with nothing promised about `out`.
long esp_seal_burst(struct esp_key *k, uint32_t spi, uint64_t seq0, const uint8_t *rows, size_t width,
		    size_t count, size_t len, size_t len_last, uint8_t *out, size_t ostride, size_t out_cap)
{
	size_t used, i;
	long r = 0;

	if (k == NULL || count == 0 || len > ESP_MAX || len_last > len || len > width
	    || ostride < ESP_OVERHEAD + padded_len(len) || seq0 + (count - 1) < seq0)
		return ESP_E_ARG;
	if (count - 1 > out_cap / ostride)
		return ESP_E_ROOM;
	used = (count - 1) * ostride + ESP_OVERHEAD + padded_len(len_last);
	if (used > out_cap)
		return ESP_E_ROOM;
	for (i = 0; i < count; i++) {
		r = seal_one(k, spi, seq0 + i, rows + i * width, i + 1 < count ? len : len_last, out + i * ostride);
		if (r < 0)
			return r;
	}
	return (long)used;
}

// One packet `buf[0:len]` under `seq` (the 64-bit number the replay window inferred): verified
// (and for `conf` decrypted) into out[0:len - ESP_OVERHEAD] (`cap` bytes available); returns the
// payload's length (the trailer checked and left behind it) or an ESP_E_* below zero. On
// ESP_E_AUTH, `out` holds garbage the caller must not use.
long esp_open_one(struct esp_key *k, const uint8_t *buf, size_t len, uint64_t seq, uint8_t *out, size_t cap)
{
	EVP_CIPHER_CTX *ctx;
	uint8_t nonce[12], aad[12], tag[ESP_ICV];
	size_t clen, pad, i;
	int n;

	if (k == NULL)
		return ESP_E_ARG;
	if (len < ESP_OVERHEAD + 4 || len > ESP_MAX)
		return ESP_E_SHORT;
	clen = len - ESP_OVERHEAD;
	if (clen % 4)
		return ESP_E_ALIGN;
	if (get32(buf + 4) != (uint32_t)seq)
		return ESP_E_SEQ;
	if (cap < clen)
		return ESP_E_ROOM;
	ctx = k->dec;
	nonce_aad(k, get32(buf), seq, buf + ESP_HDR, nonce, aad);
	memcpy(tag, buf + ESP_BODY + clen, ESP_ICV);
	if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 || EVP_DecryptUpdate(ctx, NULL, &n, aad, 12) != 1)
		return ESP_E_CRYPTO;
	if (k->conf) {
		if (EVP_DecryptUpdate(ctx, out, &n, buf + ESP_BODY, (int)clen) != 1 || (size_t)n != clen)
			return ESP_E_CRYPTO;
	} else if (EVP_DecryptUpdate(ctx, NULL, &n, buf + ESP_HDR, 8) != 1
		   || EVP_DecryptUpdate(ctx, NULL, &n, buf + ESP_BODY, (int)clen) != 1) {
		return ESP_E_CRYPTO;
	}
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ESP_ICV, tag) != 1)
		return ESP_E_CRYPTO;
	if (EVP_DecryptFinal_ex(ctx, out + clen, &n) != 1)
		return ESP_E_AUTH;
	if (!k->conf)
		memcpy(out, buf + ESP_BODY, clen);  // only once it verified
	pad = out[clen - 2];
	if (out[clen - 1] != NEXT_HEADER_ETHERIP)
		return ESP_E_NEXT;
	if (pad + 2 > clen)
		return ESP_E_PAD;
	for (i = 0; i < pad; i++)
		if (out[clen - 2 - pad + i] != (uint8_t)(i + 1))
			return ESP_E_PAD;
	return (long)(clen - 2 - pad);
}

// Open a GRO batch: packets of `stride` bytes in batch[0:total] (the last may be shorter), packet
// k expected under SPI `spi` and sequence number seq0 + k. Opens packets 0, 1, ... into `out`
// back to back (`cap` bytes) up to the first that is not such a packet or does not verify, and
// writes each payload length to lengths[k] (room for `max_count`). Returns how many were opened
// (the caller handles the rest one by one, which says why each is dropped), or ESP_E_ARG.
long esp_open_burst(struct esp_key *k, uint32_t spi, uint64_t seq0, const uint8_t *batch, size_t total,
		    size_t stride, uint8_t *out, size_t cap, uint32_t *lengths, size_t max_count)
{
	size_t count, i, w = 0;

	if (k == NULL || stride == 0 || stride > ESP_MAX || lengths == NULL)
		return ESP_E_ARG;
	count = total / stride + (total % stride != 0);
	if (count > max_count)
		count = max_count;
	for (i = 0; i < count; i++) {
		const uint8_t *p = batch + i * stride;
		size_t len = total - i * stride < stride ? total - i * stride : stride;
		long n;

		if (len < ESP_HDR || get32(p) != spi || seq0 + i < seq0)
			break;
		n = esp_open_one(k, p, len, seq0 + i, out + w, cap - w);
		if (n < 0)
			break;
		lengths[i] = (uint32_t)n;
		w += (size_t)n;
	}
	return (long)i;
}

// --- TCP segmentation fused with sealing (the TAP's TSO super-frames) -------------------------
//
// A TCPV4 super-frame (Ethernet | IPv4 | TCP | up to 64 KiB of payload, gso_size = mss) is cut
// into segments exactly as gatekeeper/vnet/offload.py's segment_rows(full_csum=True) cuts it:
// every segment's IPv4 total length, id (+1 per segment) and header checksum, TCP sequence number
// (+mss per segment), flags (CWR on the first only, FIN/PSH on the last only) and a complete TCP
// checksum. Each segment is sealed straight from the super-frame: its few header bytes are built
// on the stack and the payload is encrypted from where it lies, so nothing is copied twice.

#define ETH_LEN 14
#define TCP_MIN_MSS 88
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define MAX_PREFIX 8
#define MAX_HDRS (MAX_PREFIX + ETH_LEN + 60 + 60)

// Errors of the super-frame itself (esp_native.py raises OffloadError for these).
#define ESP_E_NOT_TCPV4 (-20)  // not IPv4 + TCP with sane header lengths
#define ESP_E_MSS (-21)        // gso_size outside TCP_MIN_MSS .. what an IPv4 length can carry
#define ESP_E_EMPTY (-22)      // no payload to segment

struct tso {
	size_t ip, l4, hlen, thl, ihl, payload, mss, count, last;
};

static long tso_parse(const uint8_t *frame, size_t len, size_t mss, struct tso *t)
{
	if (frame == NULL || len < ETH_LEN + 20 || frame[12] != 0x08 || frame[13] != 0x00)
		return ESP_E_NOT_TCPV4;
	t->ip = ETH_LEN;
	t->ihl = (size_t)(frame[ETH_LEN] & 0x0F) * 4;
	t->l4 = ETH_LEN + t->ihl;
	if (t->ihl < 20 || frame[ETH_LEN + 9] != 6 || len < t->l4 + 20)
		return ESP_E_NOT_TCPV4;
	t->thl = (size_t)(frame[t->l4 + 12] >> 4) * 4;
	t->hlen = t->l4 + t->thl;
	if (t->thl < 20 || t->hlen > len)
		return ESP_E_NOT_TCPV4;
	t->payload = len - t->hlen;
	if (t->payload == 0)
		return ESP_E_EMPTY;
	if (mss < TCP_MIN_MSS || t->hlen - ETH_LEN + mss > 65535)
		return ESP_E_MSS;
	t->mss = mss;
	t->count = (t->payload + mss - 1) / mss;
	t->last = t->payload - (t->count - 1) * mss;
	return (long)t->count;
}

// How many segments the super-frame makes, or an ESP_E_* below zero.
long esp_tso_count(const uint8_t *frame, size_t len, size_t mss)
{
	struct tso t;

	return tso_parse(frame, len, mss, &t);
}

static uint16_t fold(uint64_t s)
{
	while (s >> 16)
		s = (s & 0xFFFF) + (s >> 16);
	return (uint16_t)s;
}

// The one's-complement sum of data as big-endian 16-bit words (an odd last byte padded with zero),
// folded. Summed as native 32-bit words, which gives the same folded sum in native byte order
// (RFC 1071 2(B), 2(C)); ntohs turns it into the network-order value.
static uint16_t sum16(const uint8_t *p, size_t n)
{
	uint64_t s = 0;
	uint32_t w;
	uint16_t h;
	size_t i = 0;

	for (; i + 4 <= n; i += 4) {
		memcpy(&w, p + i, 4);
		s += w;
	}
	if (i + 2 <= n) {
		memcpy(&h, p + i, 2);
		s += h;
		i += 2;
	}
	if (i < n) {
		uint8_t last[2] = {p[i], 0};

		memcpy(&h, last, 2);
		s += h;
	}
	return ntohs(fold(s));
}

// The headers of segment i (prefix + Ethernet + IPv4 + TCP) into hdr[0 : plen + t->hlen].
static void tso_headers(const struct tso *t, const uint8_t *prefix, size_t plen, const uint8_t *frame, size_t i,
			uint8_t *hdr)
{
	uint8_t *ip = hdr + plen + t->ip, *tcp = hdr + plen + t->l4;
	size_t seglen = i + 1 < t->count ? t->mss : t->last;
	const uint8_t *data = frame + t->hlen + i * t->mss;
	uint32_t seq = get32(frame + t->l4 + 4) + (uint32_t)(i * t->mss);
	uint16_t id = (uint16_t)((frame[t->ip + 4] << 8 | frame[t->ip + 5]) + i);
	uint16_t total = (uint16_t)(t->hlen - ETH_LEN + seglen), csum;
	uint8_t flags = frame[t->l4 + 13] & (uint8_t) ~(TCP_FIN | TCP_PSH | TCP_CWR);

	memcpy(hdr, prefix, plen);
	memcpy(hdr + plen, frame, t->hlen);
	ip[2] = total >> 8;
	ip[3] = total & 0xFF;
	ip[4] = id >> 8;
	ip[5] = id & 0xFF;
	ip[10] = ip[11] = 0;
	csum = ~sum16(ip, t->ihl);
	ip[10] = csum >> 8;
	ip[11] = csum & 0xFF;
	put32(tcp + 4, seq);
	if (i == 0)
		flags |= frame[t->l4 + 13] & TCP_CWR;
	if (i + 1 == t->count)
		flags |= frame[t->l4 + 13] & (TCP_FIN | TCP_PSH);
	tcp[13] = flags;
	tcp[16] = tcp[17] = 0;
	// Pseudo-header (addresses, protocol, TCP length) + TCP header + payload. The payload starts
	// at an even offset of the TCP segment (the header is whole 32-bit words), so its sum adds.
	csum = ~fold((uint64_t)sum16(ip + 12, 8) + 6 + t->thl + seglen + sum16(tcp, t->thl) + sum16(data, seglen));
	tcp[16] = csum >> 8;
	tcp[17] = csum & 0xFF;
}

// Segments first .. first + n - 1 of a TCPV4 super-frame frame[0:len] (gso_size `mss`), each
// behind `prefix` (the EtherIP header), sealed under seq0, seq0 + 1, ... into out[k * ostride:]
// (k from 0), ostride >= ESP_OVERHEAD + padded_len(plen + hlen + mss). Returns the bytes used
// (the last packet may be shorter), or an ESP_E_* below zero.
long esp_seal_tso(struct esp_key *k, uint32_t spi, uint64_t seq0, const uint8_t *prefix, size_t plen,
		  const uint8_t *frame, size_t len, size_t mss, size_t first, size_t n, uint8_t *out, size_t ostride,
		  size_t out_cap)
{
	struct tso t;
	uint8_t hdr[MAX_HDRS];
	size_t i, used = 0;
	long r = tso_parse(frame, len, mss, &t);

	if (r < 0)
		return r;
	if (k == NULL || plen > MAX_PREFIX || n == 0 || first > t.count || n > t.count - first
	    || ostride < ESP_OVERHEAD + padded_len(plen + t.hlen + t.mss) || seq0 + (n - 1) < seq0)
		return ESP_E_ARG;
	if (n - 1 > out_cap / ostride)
		return ESP_E_ROOM;
	for (i = 0; i < n; i++) {
		size_t s = first + i;
		size_t seglen = s + 1 < t.count ? t.mss : t.last;
		size_t hl = plen + t.hlen, body = hl + seglen, padl = padded_len(body), pad = padl - body - 2;
		uint8_t trailer[5] = {1, 2, 3, 0, 0};
		uint8_t *o = out + i * ostride, *ct = o + ESP_BODY;
		EVP_CIPHER_CTX *ctx = k->enc;
		int m;

		used = i * ostride + ESP_OVERHEAD + padl;
		if (used > out_cap)
			return ESP_E_ROOM;
		tso_headers(&t, prefix, plen, frame, s, hdr);
		if (begin_seal(k, spi, seq0 + i, o, trailer, pad) != 0)
			return ESP_E_CRYPTO;
		if (k->conf) {
			if (EVP_EncryptUpdate(ctx, ct, &m, hdr, (int)hl) != 1 || (size_t)m != hl
			    || EVP_EncryptUpdate(ctx, ct + hl, &m, frame + t.hlen + s * t.mss, (int)seglen) != 1
			    || (size_t)m != seglen
			    || EVP_EncryptUpdate(ctx, ct + body, &m, trailer, (int)(pad + 2)) != 1 || (size_t)m != pad + 2)
				return ESP_E_CRYPTO;
		} else {
			memcpy(ct, hdr, hl);
			memcpy(ct + hl, frame + t.hlen + s * t.mss, seglen);
			memcpy(ct + body, trailer, pad + 2);
			if (EVP_EncryptUpdate(ctx, NULL, &m, o + ESP_HDR, 8) != 1
			    || EVP_EncryptUpdate(ctx, NULL, &m, ct, (int)padl) != 1)
				return ESP_E_CRYPTO;
		}
		if (EVP_EncryptFinal_ex(ctx, ct + padl, &m) != 1 || m != 0
		    || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ESP_ICV, ct + padl) != 1)
			return ESP_E_CRYPTO;
	}
	return (long)used;
}

// --- Coalescing the opened frames of a batch (receive) ------------------------------------------
//
// offload.py's coalesce() + merge() for a buffer of `prefix + frame` datagrams (the prefix compared
// whole): runs of consecutive segments of one TCP flow (Linux GRO's checks: same headers but for
// IPv4 length/id/checksum and TCP seq/checksum, ACK-only flags with PSH ending a run, equal sizes
// but a shorter last one, consecutive sequence numbers, at most 64 KiB) become one
// `virtio_net_hdr (NEEDS_CSUM|TCPV4) + super-frame`, its TCP checksum field seeded with the
// pseudo-header sum. Byte for byte what the Python functions make (tests compare them).

#define TCP_ACK 0x10
#define VNET_HDR_LEN 10
#define MAX_IP_LEN 65535

// (l4 offset, header length) of a plain IPv4 TCP segment (no IP options, not a fragment); 0 if not.
static int tcp_info(const uint8_t *f, size_t len, size_t *l4, size_t *hlen)
{
	size_t thl;

	if (len < ETH_LEN + 40 || f[12] != 0x08 || f[13] != 0x00)
		return 0;
	if ((f[ETH_LEN] & 0x0F) * 4 != 20 || f[ETH_LEN + 9] != 6)
		return 0;
	if ((f[ETH_LEN + 6] & 0x3F) || f[ETH_LEN + 7])
		return 0;
	*l4 = ETH_LEN + 20;
	thl = (size_t)(f[*l4 + 12] >> 4) * 4;
	if (thl < 20 || len < *l4 + thl)
		return 0;
	*hlen = *l4 + thl;
	return 1;
}

// Whether the headers at a (prefix + frame) equal ref's where segments of one flow must be equal.
static int same_flow(const uint8_t *a, const uint8_t *ref, size_t plen, size_t l4, size_t hlen)
{
	const uint8_t *fa = a + plen, *fr = ref + plen;

	return memcmp(a, ref, plen) == 0 && memcmp(fa, fr, ETH_LEN + 2) == 0
	       && memcmp(fa + ETH_LEN + 6, fr + ETH_LEN + 6, 4) == 0
	       && memcmp(fa + ETH_LEN + 12, fr + ETH_LEN + 12, l4 + 4 - (ETH_LEN + 12)) == 0
	       && memcmp(fa + l4 + 8, fr + l4 + 8, 5) == 0
	       && ((fa[l4 + 13] ^ fr[l4 + 13]) & (uint8_t)~TCP_PSH) == 0
	       && memcmp(fa + l4 + 14, fr + l4 + 14, 2) == 0
	       && memcmp(fa + l4 + 18, fr + l4 + 18, hlen - (l4 + 18)) == 0;
}

// The length of the run starting at datagram i (1: deliver it alone) and its mss.
static size_t run_at(const uint8_t *buf, size_t total, size_t stride, size_t count, size_t plen, size_t i,
		     size_t *mss_out)
{
	size_t full = total / stride, start = i * stride, l4, hlen, mss, j, limit;
	const uint8_t *ref = buf + start;
	uint32_t seq0;

	*mss_out = 0;
	if (i >= full || stride <= plen || !tcp_info(ref + plen, stride - plen, &l4, &hlen) || ref[plen + l4 + 13] != TCP_ACK
	    || stride <= plen + hlen)
		return 1;
	mss = stride - plen - hlen;
	*mss_out = mss;
	seq0 = get32(ref + plen + l4 + 4);
	for (j = i + 1; j < full; j++) {
		const uint8_t *row = buf + j * stride;

		if (!same_flow(row, ref, plen, l4, hlen) || get32(row + plen + l4 + 4) != seq0 + (uint32_t)((j - i) * mss))
			break;
		if (row[plen + l4 + 13] & TCP_PSH) {
			j++;
			break;
		}
	}
	// The shorter last datagram continues a run that reached it (and did not end with PSH).
	if (j == full && full < count && !(buf[(j - 1) * stride + plen + l4 + 13] & TCP_PSH)
	    && total - full * stride > plen + hlen && same_flow(buf + full * stride, ref, plen, l4, hlen)
	    && get32(buf + full * stride + plen + l4 + 4) == seq0 + (uint32_t)((j - i) * mss))
		j++;
	limit = (MAX_IP_LEN + ETH_LEN - hlen) / mss;
	if (limit < 1)
		limit = 1;
	return j - i < limit ? j - i : limit;
}

// `virtio hdr + super-frame` of datagrams first .. first + n - 1 into out (cap bytes); its length.
static long merge_run(const uint8_t *buf, size_t total, size_t stride, size_t plen, size_t first, size_t n,
		      size_t mss, uint8_t *out, size_t cap)
{
	const uint8_t *head = buf + first * stride + plen;
	size_t l4, hlen, k, w, payload = 0, ip_len;
	uint8_t flags = 0, *ip, *tcp;
	uint16_t c, gso = n > 1 ? 1 : 0;

	if (!tcp_info(head, stride - plen, &l4, &hlen))
		return ESP_E_ARG;
	for (k = first; k < first + n; k++) {
		size_t end = (k + 1) * stride < total ? (k + 1) * stride : total;

		payload += end - (k * stride + plen + hlen);
		flags |= buf[k * stride + plen + l4 + 13];
	}
	if (VNET_HDR_LEN + hlen + payload > cap)
		return ESP_E_ROOM;
	out[0] = 1;  // NEEDS_CSUM
	out[1] = (uint8_t)gso;
	out[2] = hlen & 0xFF;
	out[3] = (uint8_t)(hlen >> 8);
	out[4] = n > 1 ? (uint8_t)(mss & 0xFF) : 0;
	out[5] = n > 1 ? (uint8_t)(mss >> 8) : 0;
	out[6] = l4 & 0xFF;
	out[7] = (uint8_t)(l4 >> 8);
	out[8] = 16;
	out[9] = 0;
	memcpy(out + VNET_HDR_LEN, head, hlen);
	w = VNET_HDR_LEN + hlen;
	for (k = first; k < first + n; k++) {
		size_t from = k * stride + plen + hlen, end = (k + 1) * stride < total ? (k + 1) * stride : total;

		memcpy(out + w, buf + from, end - from);
		w += end - from;
	}
	ip = out + VNET_HDR_LEN + ETH_LEN;
	tcp = out + VNET_HDR_LEN + l4;
	ip_len = hlen - ETH_LEN + payload;
	ip[2] = (uint8_t)(ip_len >> 8);
	ip[3] = ip_len & 0xFF;
	ip[10] = ip[11] = 0;
	c = ~sum16(ip, l4 - ETH_LEN);
	ip[10] = c >> 8;
	ip[11] = c & 0xFF;
	tcp[13] = flags;
	c = fold((uint64_t)sum16(ip + 12, 8) + 6 + ip_len - (l4 - ETH_LEN));
	tcp[16] = c >> 8;
	tcp[17] = c & 0xFF;
	return (long)w;
}

// Coalesce a batch: datagram k at buf[k * stride:], the last possibly shorter (total bytes, count
// datagrams). For each run, items[4 * r:] = first datagram, datagrams in the run, offset and length
// of its merged `virtio hdr + super-frame` in out (0, 0 for a datagram to deliver alone). Returns
// the number of runs, or an ESP_E_* below zero.
long esp_coalesce(const uint8_t *buf, size_t total, size_t stride, size_t count, size_t plen, uint8_t *out,
		  size_t cap, uint32_t *items, size_t max_items)
{
	size_t i = 0, r = 0, w = 0;

	if (buf == NULL || stride == 0 || stride > ESP_MAX || plen > MAX_PREFIX || count == 0
	    || count > max_items || (count - 1) * stride >= total || total > count * stride)
		return ESP_E_ARG;
	while (i < count) {
		size_t mss, n = run_at(buf, total, stride, count, plen, i, &mss);
		uint32_t *item = items + 4 * r++;

		item[0] = (uint32_t)i;
		item[1] = (uint32_t)n;
		item[2] = item[3] = 0;
		if (n > 1) {
			long m = merge_run(buf, total, stride, plen, i, n, mss, out + w, cap - w);

			if (m < 0)
				return m;
			item[2] = (uint32_t)w;
			item[3] = (uint32_t)m;
			w += (size_t)m;
		}
		i += n;
	}
	return (long)r;
}

// --- One frame (ACKs and other frames a TAP hands over one at a time) ---------------------------

// Seal payload[0:len] under seq into out (cap bytes); first, when csum_start >= 0, complete the
// partial checksum of a NEEDS_CSUM frame in place as the kernel's skb_checksum_help does (the field
// at csum_start + csum_offset holds the pseudo-header seed: sum from csum_start to the end,
// complement, store; a UDP zero goes out as 0xFFFF). Returns the packet's length or an ESP_E_*.
long esp_seal_frame(struct esp_key *k, uint32_t spi, uint64_t seq, uint8_t *payload, size_t len, long csum_start,
		    size_t csum_offset, uint8_t *out, size_t cap)
{
	if (k == NULL || len > ESP_MAX || (len && payload == NULL))
		return ESP_E_ARG;
	if (cap < ESP_OVERHEAD + padded_len(len))
		return ESP_E_ROOM;
	if (csum_start >= 0) {
		size_t cs = (size_t)csum_start;
		uint16_t c;

		if (cs > len || csum_offset > len - cs || len - cs - csum_offset < 2)
			return ESP_E_ARG;
		c = (uint16_t)~sum16(payload + cs, len - cs);
		if (c == 0 && csum_offset == 6)
			c = 0xFFFF;
		payload[cs + csum_offset] = c >> 8;
		payload[cs + csum_offset + 1] = c & 0xFF;
	}
	return seal_one(k, spi, seq, payload, len, out);
}

/*
 * fe_proxy.c - PROXY protocol v1 and v2 headers (see fe_proxy.h).
 */
#include "fe_proxy.h"
#include "ms_error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const unsigned char v2_sig[FE_PROXY_V2_SIG_LEN] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";

int fe_proxy_maybe(const char *buf, size_t len)
{
    size_t n;

    n = len < FE_PROXY_V2_SIG_LEN ? len : FE_PROXY_V2_SIG_LEN;
    if (memcmp(buf, v2_sig, n) == 0)
        return 1;
    n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
    return memcmp(buf, v1_sig, n) == 0;
}

uint32_t fe_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    int k;

    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

/* ---- version 1: one text line ---- */

/* The next space-separated field of [*p, end); 0 or -1 when empty or
 * longer than outlen - 1. */
static int v1_field(const char **p, const char *end, char *out, size_t outlen, int last)
{
    const char *s = *p, *e = s;

    while (e < end && *e != ' ')
        e++;
    if (e == s || (size_t)(e - s) >= outlen || (last ? e != end : e == end))
        return -1;
    memcpy(out, s, (size_t)(e - s));
    out[e - s] = '\0';
    *p = e == end ? e : e + 1;
    return 0;
}

static int v1_port(const char *s, uint16_t *port)
{
    unsigned long v = 0;
    size_t i;

    /* proxy-protocol.txt 2.1: 0..65535, no leading zeros. */
    if (s[0] == '\0' || strlen(s) > 5 || (s[0] == '0' && s[1] != '\0'))
        return -1;
    for (i = 0; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static int v1_addr(int family, const char *s, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        return inet_pton(AF_INET, s, &sin->sin_addr) == 1 ? 0 : -1;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        return inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1 ? 0 : -1;
    }
}

static int parse_v1(const char *buf, size_t len, struct fe_proxy *p)
{
    const char *cr, *q, *end;
    char proto[8], src[64], dst[64], sport[8], dport[8];
    uint16_t sp, dp;
    size_t n = len < FE_PROXY_V1_MAX ? len : FE_PROXY_V1_MAX;
    int family;

    if ((cr = memchr(buf, '\n', n)) == NULL)
        return len >= FE_PROXY_V1_MAX ? MS_EPROTO : MS_EAGAIN;
    if (cr == buf || cr[-1] != '\r')
        return MS_EPROTO;
    end = cr - 1;
    q = buf + sizeof(v1_sig) - 1;
    for (const char *c = q; c < end; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            return MS_EPROTO;
    p->version = 1;
    if (end - q >= 7 && memcmp(q, "UNKNOWN", 7) == 0 && (end - q == 7 || q[7] == ' ')) {
        p->local = 1; /* the rest of the line is to be ignored */
        return (int)(cr - buf) + 1;
    }
    if (v1_field(&q, end, proto, sizeof(proto), 0) < 0)
        return MS_EPROTO;
    if (strcmp(proto, "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(proto, "TCP6") == 0)
        family = AF_INET6;
    else
        return MS_EPROTO;
    if (v1_field(&q, end, src, sizeof(src), 0) < 0 || v1_field(&q, end, dst, sizeof(dst), 0) < 0 ||
        v1_field(&q, end, sport, sizeof(sport), 0) < 0 ||
        v1_field(&q, end, dport, sizeof(dport), 1) < 0 || v1_port(sport, &sp) < 0 ||
        v1_port(dport, &dp) < 0 || v1_addr(family, src, sp, &p->src) < 0 ||
        v1_addr(family, dst, dp, &p->dst) < 0)
        return MS_EPROTO;
    return (int)(cr - buf) + 1;
}

/* ---- version 2: binary, with TLVs ---- */

/* Copy a TLV value as a string: MS_EPROTO when it does not fit or holds a
 * NUL (a value we would log or compare must be what was sent). */
static int tlv_str(char *out, size_t outlen, const unsigned char *v, size_t n)
{
    if (n >= outlen || memchr(v, '\0', n))
        return MS_EPROTO;
    memcpy(out, v, n);
    out[n] = '\0';
    return 0;
}

static int parse_ssl(const unsigned char *v, size_t n, struct fe_proxy *p)
{
    size_t off = 5, sl;

    /* uint8 client, uint32 verify, then sub-TLVs. */
    if (n < 5)
        return MS_EPROTO;
    p->ssl = (v[0] & FE_PP2_CLIENT_SSL) != 0;
    while (off < n) {
        if (n - off < 3)
            return MS_EPROTO;
        sl = (size_t)v[off + 1] << 8 | v[off + 2];
        if (n - off - 3 < sl)
            return MS_EPROTO;
        if (v[off] == FE_PP2_SUBTYPE_SSL_VERSION &&
            tlv_str(p->ssl_version, sizeof(p->ssl_version), v + off + 3, sl) < 0)
            return MS_EPROTO;
        if (v[off] == FE_PP2_SUBTYPE_SSL_CIPHER &&
            tlv_str(p->ssl_cipher, sizeof(p->ssl_cipher), v + off + 3, sl) < 0)
            return MS_EPROTO;
        off += 3 + sl;
    }
    return 0;
}

static int parse_v2(const unsigned char *b, size_t len, struct fe_proxy *p)
{
    size_t total, addrlen, off, tl;
    const unsigned char *crc_at = NULL;
    unsigned cmd, fam;
    uint32_t crc;

    if (len < 16)
        return MS_EAGAIN;
    if ((b[12] & 0xF0) != 0x20)
        return MS_EPROTO;
    cmd = b[12] & 0x0F;
    if (cmd > 1)
        return MS_EPROTO;
    total = 16 + ((size_t)b[14] << 8 | b[15]);
    if (total > FE_PROXY_V2_MAX)
        return MS_EPROTO;
    if (len < total)
        return MS_EAGAIN;
    p->version = 2;
    fam = b[13];
    switch (fam) {
    case 0x11: addrlen = 12; break;  /* TCP over IPv4 */
    case 0x21: addrlen = 36; break;  /* TCP over IPv6 */
    case 0x12: addrlen = 12; break;  /* UDP over IPv4 */
    case 0x22: addrlen = 36; break;  /* UDP over IPv6 */
    case 0x31: case 0x32: addrlen = 216; break; /* UNIX */
    case 0x00: addrlen = 0; break;   /* UNSPEC */
    default: return MS_EPROTO;
    }
    if (total - 16 < addrlen)
        return MS_EPROTO;
    /* LOCAL: the balancer's own connection (health checks); the address
     * block, if any, is to be ignored.  Only TCP names a client we serve. */
    if (cmd == 0 || (fam != 0x11 && fam != 0x21)) {
        p->local = 1;
    } else if (fam == 0x11) {
        struct sockaddr_in *s = (struct sockaddr_in *)&p->src, *d = (struct sockaddr_in *)&p->dst;
        memset(&p->src, 0, sizeof(p->src));
        memset(&p->dst, 0, sizeof(p->dst));
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, b + 16, 4);
        memcpy(&d->sin_addr, b + 20, 4);
        memcpy(&s->sin_port, b + 24, 2);
        memcpy(&d->sin_port, b + 26, 2);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&p->src,
                            *d = (struct sockaddr_in6 *)&p->dst;
        memset(&p->src, 0, sizeof(p->src));
        memset(&p->dst, 0, sizeof(p->dst));
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, b + 16, 16);
        memcpy(&d->sin6_addr, b + 32, 16);
        memcpy(&s->sin6_port, b + 48, 2);
        memcpy(&d->sin6_port, b + 50, 2);
    }
    if (cmd == 0)
        return (int)total;
    /* TLVs fill the rest exactly. */
    for (off = 16 + addrlen; off < total; off += 3 + tl) {
        const unsigned char *v;

        if (total - off < 3)
            return MS_EPROTO;
        tl = (size_t)b[off + 1] << 8 | b[off + 2];
        if (total - off - 3 < tl)
            return MS_EPROTO;
        v = b + off + 3;
        switch (b[off]) {
        case FE_PP2_TYPE_ALPN:
            if (tlv_str(p->alpn, sizeof(p->alpn), v, tl) < 0)
                return MS_EPROTO;
            break;
        case FE_PP2_TYPE_AUTHORITY:
            if (tlv_str(p->authority, sizeof(p->authority), v, tl) < 0)
                return MS_EPROTO;
            break;
        case FE_PP2_TYPE_CRC32C:
            if (tl != 4 || crc_at)
                return MS_EPROTO;
            crc_at = v;
            break;
        case FE_PP2_TYPE_UNIQUE_ID:
            if (tl > sizeof(p->unique_id))
                return MS_EPROTO;
            memcpy(p->unique_id, v, tl);
            p->unique_id_len = tl;
            break;
        case FE_PP2_TYPE_SSL:
            if (parse_ssl(v, tl, p) < 0)
                return MS_EPROTO;
            break;
        default: /* NOOP, NETNS and unknown types are skipped (2.2) */
            break;
        }
    }
    if (crc_at) {
        /* 2.2.2: over the whole header with the checksum field zeroed. */
        static const unsigned char zero[4];
        uint32_t want = (uint32_t)crc_at[0] << 24 | (uint32_t)crc_at[1] << 16 |
                        (uint32_t)crc_at[2] << 8 | crc_at[3];

        crc = fe_crc32c(0, b, (size_t)(crc_at - b));
        crc = fe_crc32c(crc, zero, 4);
        crc = fe_crc32c(crc, crc_at + 4, total - (size_t)(crc_at + 4 - b));
        if (crc != want)
            return MS_EPROTO;
        p->crc_checked = 1;
    }
    return (int)total;
}

int fe_proxy_parse(const char *buf, size_t len, struct fe_proxy *p)
{
    memset(p, 0, sizeof(*p));
    if (len == 0)
        return MS_EAGAIN;
    if (!fe_proxy_maybe(buf, len))
        return MS_EPROTO;
    if ((unsigned char)buf[0] == v2_sig[0])
        return len < FE_PROXY_V2_SIG_LEN ? MS_EAGAIN
                                         : parse_v2((const unsigned char *)buf, len, p);
    return len < sizeof(v1_sig) - 1 ? MS_EAGAIN : parse_v1(buf, len, p);
}

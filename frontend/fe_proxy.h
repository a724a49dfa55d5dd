/*
 * fe_proxy.h - the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2, with v2 TLVs) as a pure parser.
 *
 * A load balancer that speaks PROXY sends one header before anything else
 * on the connection; it names the real client (and the address it
 * connected to).  The session parses it before the banner on listeners that
 * enable it (`[listener.X] proxy = yes`), and only from peers in
 * `[smtp] proxy_trusted_networks`: anyone else could claim any address.
 *
 * fe_proxy_parse() takes (buf, len) and answers MS_EAGAIN (need more),
 * MS_EPROTO (not a valid header: close the connection, there is nobody to
 * answer) or the octets the header takes.  Nothing else is consumed: what
 * follows the header is the client's (SMTP, or a TLS ClientHello).  No
 * allocation, no I/O; any thread.  Unit-tested by tests/unit/
 * test_fe_proxy.c, fuzzed by tests/fuzz/fuzz_fe_proxy.c.
 *
 * Limits (named, each an MS_EPROTO):
 *   FE_PROXY_V1_MAX   v1 line including CRLF (the spec's 107 octets)
 *   FE_PROXY_V2_MAX   v2 header including the 16-octet preamble; the spec
 *                     allows 65535 + 16, we take what a load balancer sends
 *                     with TLVs (HAProxy's own default buffer is smaller)
 */
#ifndef FE_PROXY_H
#define FE_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define FE_PROXY_V1_MAX 107
#define FE_PROXY_V2_MAX 4096
#define FE_PROXY_V2_SIG_LEN 12

/* v2 TLV types we read (proxy-protocol.txt 2.2). */
#define FE_PP2_TYPE_ALPN 0x01
#define FE_PP2_TYPE_AUTHORITY 0x02
#define FE_PP2_TYPE_CRC32C 0x03
#define FE_PP2_TYPE_NOOP 0x04
#define FE_PP2_TYPE_UNIQUE_ID 0x05
#define FE_PP2_TYPE_SSL 0x20
#define FE_PP2_SUBTYPE_SSL_VERSION 0x21
#define FE_PP2_SUBTYPE_SSL_CN 0x22
#define FE_PP2_SUBTYPE_SSL_CIPHER 0x23
#define FE_PP2_TYPE_NETNS 0x30
#define FE_PP2_CLIENT_SSL 0x01

struct fe_proxy {
    int version; /* 1 or 2 */
    /* 1: the header names no client (v1 UNKNOWN, v2 LOCAL, or a family we
     * do not relay such as UNIX or UDP): keep the connection's addresses. */
    int local;
    struct sockaddr_storage src, dst; /* when !local; ports included */
    /* v2 TLVs, NUL-terminated ("" when absent; truncated values are an
     * error, never silently cut). */
    char authority[256]; /* the SNI the client sent to the balancer */
    char alpn[64];
    int ssl;             /* PP2_TYPE_SSL present with PP2_CLIENT_SSL */
    char ssl_version[32];
    char ssl_cipher[64];
    unsigned char unique_id[128];
    size_t unique_id_len;
    int crc_checked; /* a CRC32C TLV was present and matched */
};

/* 1 when buf (len >= 1) can still be the start of a PROXY header, 0 when it
 * cannot; for telling "sent no header" from "sent half of one". */
int fe_proxy_maybe(const char *buf, size_t len);

/* Parse one v1 or v2 header at the start of buf.  See above. */
int fe_proxy_parse(const char *buf, size_t len, struct fe_proxy *p);

/* RFC 3720 CRC32C (Castagnoli), as the v2 CRC32C TLV uses it. */
uint32_t fe_crc32c(uint32_t crc, const void *buf, size_t len);

#endif

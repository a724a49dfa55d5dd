/*
 * ms_https.h - HTTPS GET on a libuv loop, through libcurl's multi
 * interface.  This module is the only one that includes libcurl.
 *
 * For fetching small documents a protocol names (an MTA-STS policy, RFC
 * 8461 §3.3) without blocking the loop: libcurl's sockets are watched by
 * uv_poll handles and its timeouts by one uv_timer, so a fetch never
 * waits on the loop thread.  The server's certificate is always verified
 * (chain to the CAs, name of the host: RFC 8461 §3.3 requires it); no
 * redirect is followed (§3.3); only https.  The host's address comes from
 * the caller (its own resolver, lib/io/ms_resolver.h), so libcurl never
 * resolves names itself.
 *
 * Ids, not pointers: the callback gets the caller's 64-bit id back, once,
 * on a later loop turn, unless the fetch is cancelled first.  One loop
 * thread.  Errors: a call returns 0 or a negative MS_E* code (and then no
 * callback); a fetch that fails reports it in the result: MS_EIO
 * (connection, TLS, certificate, timeout: `why` says which), MS_ETOOBIG
 * (a body over max_bytes).
 */
#ifndef MS_HTTPS_H
#define MS_HTTPS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Defaults: a whole fetch, and the body kept. */
#define MS_HTTPS_TIMEOUT_MS 30000
#define MS_HTTPS_BODY_MAX 65536
/* Longest host name and path taken. */
#define MS_HTTPS_HOST_MAX 255
#define MS_HTTPS_PATH_MAX 512

struct ms_https_conf {
    const char *ca_file;   /* PEM CAs; NULL or "": the system's */
    int port;              /* 0: 443 */
    uint64_t timeout_ms;   /* 0: MS_HTTPS_TIMEOUT_MS */
    size_t max_bytes;      /* 0: MS_HTTPS_BODY_MAX */
};

struct ms_https_result {
    int err;                  /* 0 or MS_EIO / MS_ETOOBIG */
    long status;              /* HTTP status; 0 when none came */
    const char *content_type; /* the Content-Type field, or NULL */
    const char *body;         /* err 0: the body (not NUL-terminated) */
    size_t len;
    const char *why;          /* err: in words */
    int cert;                 /* err: the server's certificate was refused */
};

typedef struct ms_https ms_https;
typedef void (*ms_https_cb)(void *arg, uint64_t id, const struct ms_https_result *res);

/* NULL with the reason in err when libcurl cannot start. */
ms_https *ms_https_new(uv_loop_t *loop, const struct ms_https_conf *conf, char *err,
                       size_t errlen);
/* GET https://host[:port]/path from address addr (an IPv4 or IPv6
 * literal).  0, or MS_EINVAL (a host, address or path we will not put in
 * a URL), MS_ENOMEM. */
int ms_https_get(ms_https *h, const char *host, const char *addr, const char *path,
                 ms_https_cb cb, void *arg, uint64_t id);
/* POST body (len octets, copied) as content_type to
 * https://host:port/path (port 0: 443) at addr, for documents a protocol
 * hands over (a TLS report, RFC 8460 §5.4).  As ms_https_get(); the
 * result's body is the server's answer. */
int ms_https_post(ms_https *h, const char *host, int port, const char *addr, const char *path,
                  const char *content_type, const void *body, size_t len, ms_https_cb cb,
                  void *arg, uint64_t id);
/* Forget the fetches with this id: no callback. */
void ms_https_cancel(ms_https *h, uint64_t id);
/* Fetches in flight. */
size_t ms_https_pending(const ms_https *h);
/* Cancel everything (no callbacks) and free; handles close asynchronously
 * on the loop. */
void ms_https_free(ms_https *h);

#endif

/*
 * ms_http.h - the operations HTTP listener: GET /metrics, /healthz, /readyz.
 *
 * Runs on one libuv loop (the caller's); all callbacks run on that loop.
 * HTTP/1.0-style: one request per connection, answered and closed.  Requests
 * are parsed by ms_http_parse_request(), a pure function, limited to
 * MS_HTTP_REQUEST_MAX octets; anything else gets 400/404/405/431.
 *
 * /healthz answers 200 while the loop runs.  /readyz asks the `ready`
 * callback: 200 "ready" or 503 with the reason it wrote.
 */
#ifndef MS_HTTP_H
#define MS_HTTP_H

#include <stddef.h>
#include <uv.h>

#define MS_HTTP_REQUEST_MAX 8192

/* Pure parser.  Returns bytes consumed (the whole head, through the blank
 * line) when a complete request head is in buf, MS_EAGAIN when more input is
 * needed, MS_EPROTO for a malformed head, MS_ETOOBIG past
 * MS_HTTP_REQUEST_MAX.  On success method and path point into buf (not
 * NUL-terminated) with their lengths. */
struct ms_http_request {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
};
int ms_http_parse_request(const char *buf, size_t len, struct ms_http_request *req);

/* Returns 1 when ready; else 0 with a short reason in why. */
typedef int (*ms_http_ready_cb)(void *arg, char *why, size_t whylen);

typedef struct ms_http_server ms_http_server;

/* Listen on "host:port".  Returns NULL (and logs) if it cannot bind. */
ms_http_server *ms_http_start(uv_loop_t *loop, const char *hostport, ms_http_ready_cb ready,
                              void *arg);
/* Stop listening; the server frees itself once every handle is closed. */
void ms_http_stop(ms_http_server *srv);

#endif

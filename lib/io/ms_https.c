/*
 * ms_https.c - the only file that includes libcurl (ms_https.h).
 *
 * libcurl's multi interface in its "socket action" form: libcurl says
 * which sockets to watch (socket_cb) and when to wake it (timer_cb); a
 * uv_poll per socket and one uv_timer call curl_multi_socket_action(), and
 * finished transfers are collected after each call (collect).  Handles are
 * closed asynchronously; the client frees itself when the last is closed.
 */
#include "ms_https.h"
#include "ms_error.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fetch {
    struct ms_list node;
    ms_https *h;
    CURL *easy;
    struct curl_slist *resolve;
    struct curl_slist *headers;      /* POST: its Content-Type */
    char *post;                      /* POST: a copy of the body sent */
    char *body;
    size_t len, cap;
    int too_big;
    char errbuf[CURL_ERROR_SIZE];
    ms_https_cb cb;
    void *arg;
    uint64_t id;
};

struct sock {
    uv_poll_t poll;
    ms_https *h;
    curl_socket_t fd;
};

struct ms_https {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct ms_list fetches;  /* struct fetch.node */
    size_t nfetches;
    size_t handles;          /* open uv handles (the timer, the polls) */
    int freeing;
    char *ca_file;
    int port;
    long timeout_ms;
    size_t max_bytes;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void handle_closed(uv_handle_t *uvh)
{
    ms_https *h;

    if (uvh->type == UV_POLL) {
        struct sock *s = uvh->data;
        h = s->h;
        free(s);
    } else {
        h = uvh->data;
    }
    if (--h->handles == 0 && h->freeing) {
        free(h->ca_file);
        free(h);
    }
}

static void fetch_free(struct fetch *f)
{
    if (ms_list_linked(&f->node)) {
        ms_list_remove(&f->node);
        f->h->nfetches--;
    }
    curl_multi_remove_handle(f->h->multi, f->easy);
    curl_easy_cleanup(f->easy);
    curl_slist_free_all(f->resolve);
    curl_slist_free_all(f->headers);
    free(f->post);
    free(f->body);
    free(f);
}

/* Finished transfers: report and free each. */
static void collect(ms_https *h)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        struct fetch *f = NULL;
        struct ms_https_result res;
        char *ct = NULL;
        ms_https_cb cb;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
        memset(&res, 0, sizeof(res));
        curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &res.status);
        curl_easy_getinfo(f->easy, CURLINFO_CONTENT_TYPE, &ct);
        res.content_type = ct;
        if (f->too_big) {
            res.err = MS_ETOOBIG;
            res.why = "body too large";
        } else if (msg->data.result != CURLE_OK) {
            res.err = MS_EIO;
            res.why = f->errbuf[0] ? f->errbuf : curl_easy_strerror(msg->data.result);
            /* The server's certificate, not the network (RFC 8460 §4.3.2.3
             * reports these apart: sts-webpki-invalid). */
            res.cert = msg->data.result == CURLE_PEER_FAILED_VERIFICATION ||
                       msg->data.result == CURLE_SSL_CACERT_BADFILE ||
                       msg->data.result == CURLE_SSL_CERTPROBLEM;
        } else {
            res.body = f->body ? f->body : "";
            res.len = f->len;
        }
        /* Unlinked first: the callback may cancel by this id, which then
         * finds nothing; freed after it (ct and the body live until then). */
        ms_list_remove(&f->node);
        h->nfetches--;
        cb = f->cb;
        if (cb)
            cb(f->arg, f->id, &res);
        fetch_free(f);
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock *s = p->data;
    ms_https *h = s->h;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(h->multi, s->fd, flags, &running);
    collect(h);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    ms_https *h = userp;
    struct sock *s = socketp;
    int ev = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            curl_multi_assign(h->multi, fd, NULL);
            uv_close((uv_handle_t *)&s->poll, handle_closed);
        }
        return 0;
    }
    if (s == NULL) {
        s = ms_calloc(1, sizeof(*s));
        s->h = h;
        s->fd = fd;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        h->handles++;
        curl_multi_assign(h->multi, fd, s);
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static void on_timer(uv_timer_t *t)
{
    ms_https *h = t->data;
    int running;

    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(h);
}

/* libcurl asks to be woken after timeout_ms (-1: never).  Never call
 * libcurl from here: the timer does, on the loop. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    ms_https *h = userp;

    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&h->timer);
    else
        uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct fetch *f = userp;
    size_t n = size * nmemb;

    if (n > f->h->max_bytes - f->len) {
        f->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR ends the transfer */
    }
    if (f->len + n > f->cap) {
        f->cap = f->len + n > 2 * f->cap ? f->len + n : 2 * f->cap;
        f->body = ms_realloc(f->body, f->cap);
    }
    memcpy(f->body + f->len, ptr, n);
    f->len += n;
    return n;
}

ms_https *ms_https_new(uv_loop_t *loop, const struct ms_https_conf *conf, char *err,
                       size_t errlen)
{
    ms_https *h;

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init: %s", curl_easy_strerror(global_rc));
        return NULL;
    }
    h = ms_calloc(1, sizeof(*h));
    if ((h->multi = curl_multi_init()) == NULL) {
        snprintf(err, errlen, "curl_multi_init failed");
        free(h);
        return NULL;
    }
    h->loop = loop;
    h->ca_file = conf && conf->ca_file && *conf->ca_file ? ms_strdup(conf->ca_file) : NULL;
    h->port = conf && conf->port ? conf->port : 443;
    h->timeout_ms = (long)(conf && conf->timeout_ms ? conf->timeout_ms : MS_HTTPS_TIMEOUT_MS);
    h->max_bytes = conf && conf->max_bytes ? conf->max_bytes : MS_HTTPS_BODY_MAX;
    ms_list_init(&h->fetches);
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    h->handles = 1;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return h;
}

/* A host name we put in a URL. */
static int host_ok(const char *s)
{
    return ms_host_chars_ok(s, MS_HTTPS_HOST_MAX);
}

/* Start a GET (content_type NULL) or a POST of body. */
static int start(ms_https *h, const char *host, int port, const char *addr, const char *path,
                 const char *content_type, const void *body, size_t len, ms_https_cb cb,
                 void *arg, uint64_t id)
{
    char url[MS_HTTPS_HOST_MAX + MS_HTTPS_PATH_MAX + 32];
    char pin[MS_HTTPS_HOST_MAX + INET6_ADDRSTRLEN + 16], ct[128];
    unsigned char a[sizeof(struct in6_addr)];
    struct fetch *f;
    size_t i;
    int v6;

    if (h->freeing || !host_ok(host) || strlen(path) > MS_HTTPS_PATH_MAX || path[0] != '/' ||
        port <= 0 || port > 65535)
        return MS_EINVAL;
    for (i = 0; path[i]; i++)
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f)
            return MS_EINVAL;
    if (content_type && (strlen(content_type) > sizeof(ct) - 16 || strpbrk(content_type, "\r\n")))
        return MS_EINVAL;
    v6 = inet_pton(AF_INET6, addr, a) == 1;
    if (!v6 && inet_pton(AF_INET, addr, a) != 1)
        return MS_EINVAL;
    f = ms_calloc(1, sizeof(*f));
    f->h = h;
    f->cb = cb;
    f->arg = arg;
    f->id = id;
    if ((f->easy = curl_easy_init()) == NULL) {
        free(f);
        return MS_ENOMEM;
    }
    snprintf(url, sizeof(url), "https://%s:%d%s", host, port, path);
    /* The address our resolver found, so libcurl resolves nothing. */
    snprintf(pin, sizeof(pin), v6 ? "%s:%d:[%s]" : "%s:%d:%s", host, port, addr);
    f->resolve = curl_slist_append(NULL, pin);
    curl_easy_setopt(f->easy, CURLOPT_URL, url);
    curl_easy_setopt(f->easy, CURLOPT_RESOLVE, f->resolve);
    curl_easy_setopt(f->easy, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(f->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(f->easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(f->easy, CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_file)
        curl_easy_setopt(f->easy, CURLOPT_CAINFO, h->ca_file);
    curl_easy_setopt(f->easy, CURLOPT_TIMEOUT_MS, h->timeout_ms);
    curl_easy_setopt(f->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(f->easy, CURLOPT_USERAGENT, "mailstream");
    if (content_type) {
        /* Our own copy: the caller's body may go once this returns. */
        f->post = ms_malloc(len ? len : 1);
        memcpy(f->post, body, len);
        snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
        f->headers = curl_slist_append(NULL, ct);
        curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->headers);
        curl_easy_setopt(f->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(f->easy, CURLOPT_POSTFIELDS, f->post);
    }
    curl_easy_setopt(f->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(f->easy, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(f->easy, CURLOPT_ERRORBUFFER, f->errbuf);
    curl_easy_setopt(f->easy, CURLOPT_PRIVATE, f);
    if (curl_multi_add_handle(h->multi, f->easy) != CURLM_OK) {
        curl_easy_cleanup(f->easy);
        curl_slist_free_all(f->resolve);
        curl_slist_free_all(f->headers);
        free(f->post);
        free(f);
        return MS_ENOMEM;
    }
    ms_list_insert_head(&h->fetches, &f->node);
    h->nfetches++;
    return 0;
}

int ms_https_get(ms_https *h, const char *host, const char *addr, const char *path,
                 ms_https_cb cb, void *arg, uint64_t id)
{
    return start(h, host, h->port, addr, path, NULL, NULL, 0, cb, arg, id);
}

int ms_https_post(ms_https *h, const char *host, int port, const char *addr, const char *path,
                  const char *content_type, const void *body, size_t len, ms_https_cb cb,
                  void *arg, uint64_t id)
{
    if (content_type == NULL)
        return MS_EINVAL;
    return start(h, host, port ? port : 443, addr, path, content_type, body, len, cb, arg, id);
}

void ms_https_cancel(ms_https *h, uint64_t id)
{
    struct ms_list *n, *next;

    for (n = h->fetches.next; n != &h->fetches; n = next) {
        struct fetch *f = ms_list_entry(n, struct fetch, node);
        next = n->next;
        if (f->id == id)
            fetch_free(f);
    }
}

size_t ms_https_pending(const ms_https *h)
{
    return h->nfetches;
}

void ms_https_free(ms_https *h)
{
    if (h == NULL)
        return;
    h->freeing = 1;
    while (!ms_list_empty(&h->fetches))
        fetch_free(ms_list_entry(ms_list_first(&h->fetches), struct fetch, node));
    curl_multi_cleanup(h->multi); /* may close polls through socket_cb */
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, handle_closed);
}

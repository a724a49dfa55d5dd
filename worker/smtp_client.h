/*
 * smtp_client.h - an asynchronous SMTP client transaction on a libuv loop.
 *
 * One wk_smtp session delivers one message to one server: connect (TCP,
 * or a UNIX-domain socket when addr is AF_UNIX), banner, EHLO (HELO if EHLO
 * is refused), AUTH when credentials are given, MAIL FROM with SIZE= /
 * BODY=8BITMIME / BODY=BINARYMIME / SMTPUTF8 when the server advertises
 * them, one RCPT TO per recipient, then the message: BDAT chunks when the
 * server offers CHUNKING, else DATA with the message dot-stuffed (RFC 5321
 * §4.5.2); QUIT.  With `lmtp` set it speaks LMTP (RFC 2033): LHLO (no HELO
 * fallback) and, after the data (the end of DATA or the LAST chunk, RFC
 * 3030 §4), one reply per accepted recipient, each final for its recipient
 * (§4.2).
 *
 * STARTTLS (RFC 3207) by policy: `none` never; `may` (opportunistic, the
 * default) when the server offers it, certificate not checked; `encrypt`
 * requires it (not offered: 4.7.4), certificate not checked; `verify`
 * requires it and a certificate chain to our CAs naming tls_name (the MX
 * host name, or the IP literal).  A failed handshake or verification is
 * 4.7.5 - except under `may`: there a failed handshake (an error, the
 * server closing, a timeout) or a 421 to STARTTLS is followed, within the
 * same session, by a new connection to the same address without STARTTLS
 * (as Postfix does); the result then says tls "" and tls_fallback (XXX: such
 * a connection is parked like any other, so a message that reuses it goes
 * in plaintext too; a new connection tries TLS again).  Any other refusal
 * of STARTTLS under `may` leaves the session as it was (RFC 3207 §4), so it
 * goes on in plaintext on the same connection, as Postfix does.  After TLS
 * the client says EHLO again and forgets the first answer; bytes the
 * server sent after its 220 to STARTTLS are refused (command injection).
 * The connection and its TLS are lib/core's transport (ms_conn.h:
 * SNI and the name check are its struct ms_tls_policy).  Over a
 * UNIX-domain socket STARTTLS is never used (the socket is local).
 *
 * REQUIRETLS (RFC 8689) when msg->requiretls is set: the message goes only
 * over TLS with a certificate chain to our CAs naming tls_name (§4.2.1
 * step 4; the policy is `verify` whatever the destination's), and only to
 * a server that says REQUIRETLS after TLS (step 5), with REQUIRETLS in
 * MAIL FROM - never in plaintext, never without it.  What the server's
 * answers show it cannot do is refused here as a permanent failure of
 * this server (res->try_next: the caller tries its next address first,
 * as RFC 8689 registers X.7.30 for "none of the SMTP servers"): no
 * STARTTLS offered, or a 5yz to STARTTLS, is 550 5.7.10; no REQUIRETLS
 * after TLS is 550 5.7.30.  A
 * failed handshake, a certificate that does not verify, a 4yz to STARTTLS
 * or a lost connection stay what they are for `verify` (4.7.5 and the
 * like, deferred): they may be temporary (a renewal, an attacker on the
 * path), and deferring never exposes the message.  Two exceptions, where
 * the message leaves no network hop behind: a UNIX-domain socket (local)
 * needs neither TLS nor REQUIRETLS, and LMTP (RFC 2033: final delivery,
 * RFC 8689 §4.4) needs verified TLS but not the REQUIRETLS keyword,
 * which it gets when offered.  XXX RFC 8689 §4.2.1 step 2 (the MX lookup
 * validated by DNSSEC or MTA-STS) and DANE (RFC 7672) as the way to
 * authenticate the server are not done: they come with DANE and MTA-STS
 * and are inputs to wk_requiretls_check().
 *
 * DSN (RFC 3461) when the server offers it: RET and ENVID go with MAIL,
 * NOTIFY and ORCPT with each RCPT, as they came (§5.2.1; ENVID and the
 * ORCPT address xtext-encoded again, §4).  The result says whether the
 * server offered DSN, so the caller knows who owes a success notice
 * (dsn_rules.h).  A server that does not offer DSN gets none of them.
 *
 * AUTH (RFC 4954) when msg->auth_user is set (the relay host): PLAIN
 * (RFC 4616, initial response) when offered, else LOGIN (only those in
 * msg->auth_mechs, when set).  Credentials go only over TLS: a session
 * without TLS at that point (STARTTLS not
 * offered, policy `none`, a `may` fallback) defers every recipient with
 * 4.7.11 and sends nothing, unless msg->auth_plaintext allows it.  A server
 * that offers neither PLAIN nor LOGIN defers with 4.7.0 (XXX: we could
 * send without AUTH; a smarthost that wants none should not be given
 * credentials).  A failed AUTH (535 5.7.8, or any 5yz) is a configuration
 * problem, not the message's: it is reported as code 0 with 4.7.8 (or
 * the server's 4.x.x on a 4yz) and the server's reply in the text, so the
 * mail is deferred, never bounced (Postfix's smtp_sasl_auth_soft_bounce).
 * The password is never logged and is wiped from our buffers once sent.
 *
 * CHUNKING (RFC 3030) when offered: after the RCPTs, "BDAT <n>" chunks of
 * WK_SMTP_BDAT_CHUNK octets, the last one "BDAT <n> LAST", each answered
 * before the next goes out (no BDAT pipelining); the message is sent as it
 * is, without dot-stuffing (a text body has its bare LFs made CRLF and a
 * final CRLF added, as with DATA; a BINARYMIME body goes octet for octet).
 * Timeouts: a chunk's reply waits `block`, the LAST chunk's `dot`.  A
 * message marked BINARYMIME (body_binarymime) needs CHUNKING and
 * BINARYMIME at the server; without them it is refused locally with
 * 554 5.6.3 (RFC 3030 §3: no conversion here).
 *
 * PIPELINING (RFC 2920) when offered: MAIL, the RCPTs and DATA (not BDAT)
 * are sent together and the replies taken in order.
 *
 * Connection reuse: with a cache (wk_smtp_cache), a session whose message
 * ended normally is parked instead of saying QUIT, for up to the cache's
 * idle time; the next wk_smtp_start() to the same address with the same
 * TLS settings (and AUTH user; for a UNIX socket, the same path) takes it
 * and says RSET before MAIL.  A connection that has finished the cache's
 * max_msgs transactions gets QUIT instead of being parked.  A parked
 * connection the server closes or talks on is dropped.  The result says
 * whether the connection was reused, so a caller can retry on a fresh one
 * when a reused connection fails before the server answered anything.
 *
 * Duplicate fencing (docs/reliability.md, "Nothing twice"): with msg->gate
 * set, the session stops once every RCPT is answered and at least one was
 * accepted, before any octet of the message (before the body of DATA, or
 * the first BDAT chunk), and calls gate(arg, id).  With PIPELINING, DATA
 * itself went with MAIL and RCPT (it commits nothing), so its 354 comes
 * back while the caller checks, and the body follows the answer without
 * another round trip.  The caller answers with wk_smtp_gate_answer(): a
 * deadline (uv_now ms) lets the message go, and the session then never
 * sends the octets that end it (the "." of DATA, the last octet of BDAT
 * LAST) after that deadline: it closes the connection instead, which the
 * server takes as an aborted transaction, and reports 4.4.2.  0 refuses:
 * every recipient not yet final gets code 0, 4.4.0 and res->fenced, and
 * the session says QUIT, or closes the connection when DATA was pipelined
 * (the server may be reading message text); no octet of the message was
 * sent.  Until the answer the RCPT timeout runs.
 *
 * Outcome: the callback gets one effective result per recipient, in the
 * order given: the reply to its RCPT if that was not 2yz, else the reply to
 * the end of DATA (or to DATA itself); if the session failed earlier (banner,
 * EHLO, MAIL, a timeout, a lost connection) every recipient without a final
 * reply gets that reply, or code 0 and our own diagnostic when the server
 * said nothing.  Every result has an enhanced status code: the server's, or
 * X.0.0 from the reply class, or 4.4.1 (no answer) / 4.4.2 (bad connection)
 * for our own diagnostics (RFC 3463).  The callback is called exactly once,
 * as soon as the outcome is known (before QUIT), unless the session is
 * cancelled first.
 *
 * Ownership: wk_smtp_start() copies everything it needs (the credentials,
 * the addresses), so the caller may free its copies at once, except the
 * message octets (msg->data): a message that needs no octet changed goes
 * on the wire from them (most of it: smtp_body_prepare), any other is
 * copied into its wire form (dot-stuffed or CRLF) when MAIL is sent, so
 * they must stay until the callback has been called or wk_smtp_cancel();
 * the session reads none of them after that.  The session
 * frees itself after closing its handles.  The handle returned is valid until
 * the callback has been called or wk_smtp_cancel() - whichever comes first;
 * after that the caller must forget it.  One loop thread only.
 *
 * Timeouts are RFC 5321 §4.5.3.2's client timeouts, each named below.
 */
#ifndef WK_SMTP_CLIENT_H
#define WK_SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_addr.h"
#include "ms_conn.h"
#include "ms_smtp_reply.h"

/* STARTTLS policy per destination (docs/config.md, [tls]). */
enum wk_tls_policy { WK_TLS_NONE, WK_TLS_MAY, WK_TLS_ENCRYPT, WK_TLS_VERIFY };

/* "none", "may", "encrypt", "verify" -> the policy, or -1. */
int wk_tls_policy_parse(const char *name);
const char *wk_tls_policy_name(enum wk_tls_policy p);

/* Not in the RFC: how long a TCP connect may take (Postfix's default). */
#define WK_SMTP_TIMEOUT_CONNECT_MS (30 * 1000)
/* §4.5.3.2.1 Initial 220 Message: 5 minutes. */
#define WK_SMTP_TIMEOUT_BANNER_MS (5 * 60 * 1000)
/* EHLO/HELO have no timeout of their own in §4.5.3.2; MAIL's is used. */
#define WK_SMTP_TIMEOUT_HELO_MS (5 * 60 * 1000)
/* §4.5.3.2.2 MAIL Command: 5 minutes. */
#define WK_SMTP_TIMEOUT_MAIL_MS (5 * 60 * 1000)
/* §4.5.3.2.3 RCPT Command: 5 minutes. */
#define WK_SMTP_TIMEOUT_RCPT_MS (5 * 60 * 1000)
/* §4.5.3.2.4 DATA Initiation: 2 minutes. */
#define WK_SMTP_TIMEOUT_DATA_MS (2 * 60 * 1000)
/* §4.5.3.2.5 Data Block: 3 minutes per TCP SEND. */
#define WK_SMTP_TIMEOUT_BLOCK_MS (3 * 60 * 1000)
/* §4.5.3.2.6 DATA Termination: 10 minutes for the reply to ".". */
#define WK_SMTP_TIMEOUT_DOT_MS (10 * 60 * 1000)
/* Not in the RFC: the outcome is known by then, so QUIT gets little time. */
#define WK_SMTP_TIMEOUT_QUIT_MS (10 * 1000)

/* The message is written in blocks of this size, each with its own
 * WK_SMTP_TIMEOUT_BLOCK_MS (a "data block" of §4.5.3.2.5). */
#define WK_SMTP_DATA_BLOCK (64 * 1024)
/* RFC 3030: the size of one BDAT chunk.  Each chunk waits for its reply, so
 * big chunks keep round trips few (26 for the largest message); the chunk
 * is written in WK_SMTP_DATA_BLOCK blocks like DATA. */
#define WK_SMTP_BDAT_CHUNK (1024 * 1024)
/* Longest reply (formatted, see ms_reply_format) kept per recipient. */
#define WK_SMTP_REPLY_TEXT_MAX 512
/* RFC 3461 §4.4 ENVID and §4.2 ORCPT (the address part), xtext-decoded, and
 * the ORCPT address type (an atom: "rfc822", "utf-8"): longer ones, or an
 * ORCPT without "type;", are not passed on (a warning says so; the
 * frontend accepts none of them). */
#define WK_SMTP_ENVID_MAX 100
#define WK_SMTP_ORCPT_MAX 500
#define WK_SMTP_ORCPT_TYPE_MAX 32

/* Timeouts in milliseconds; wk_smtp_timeouts_default() fills the RFC's. */
struct wk_smtp_timeouts {
    uint64_t connect, banner, helo, mail, rcpt, data, block, dot, quit;
};
void wk_smtp_timeouts_default(struct wk_smtp_timeouts *t);


/* Default of [delivery] max_msgs_per_conn: transactions one connection
 * carries before it gets QUIT instead of being parked again (Postfix's
 * smtp_connection_reuse_count_limit is unlimited by default, its
 * smtp_connection_reuse_time_limit 300 s; we bound by count). */
#define WK_SMTP_MAX_MSGS_PER_CONN 100

/* Parked connections, one loop.  idle_ms: how long a connection may wait
 * for the next message; max_msgs: transactions (finished, whatever their
 * outcome) after which a connection is closed with QUIT instead of parked
 * (0: no limit); max_idle: connections kept parked (all destinations
 * together; more are closed with QUIT).  The caller makes max_idle as large
 * as the sessions it runs at once (the delivery engine: its in-flight
 * window), so a burst to one relay finds its connections again: with fewer,
 * each round closes and reopens the surplus, which costs the worker and the
 * server about twice the CPU per message (docs/scaling.md).  Idle ones
 * still close after idle_ms.  Free with wk_smtp_cache_close() while the
 * loop still runs (it closes the idle connections). */
typedef struct wk_smtp_cache wk_smtp_cache;
wk_smtp_cache *wk_smtp_cache_new(uint64_t idle_ms, unsigned max_msgs, size_t max_idle);
/* Connections parked right now. */
size_t wk_smtp_cache_idle(const wk_smtp_cache *c);
void wk_smtp_cache_close(wk_smtp_cache *c);

struct wk_smtp_msg {
    const char *log_id;             /* the queue id, for log lines */
    const char *helo_name;          /* our name in EHLO/HELO */
    const char *mail_from;          /* "" is the null sender <> */
    int body_8bitmime;              /* the client declared BODY=8BITMIME */
    int body_binarymime;            /* the client declared BODY=BINARYMIME */
    int smtputf8;                   /* the client declared SMTPUTF8 */
    int lmtp;                       /* speak LMTP (RFC 2033): LHLO, one reply per
                                     * accepted recipient after the data */
    enum wk_tls_policy tls;         /* STARTTLS policy (WK_TLS_NONE when 0) */
    struct ms_tls_ctx *tls_ctx;     /* a client context (ms_tls_ctx_new_client: the
                                     * CAs `verify` trusts); needed unless tls is
                                     * WK_TLS_NONE */
    const char *tls_name;           /* name to check and send as SNI */
    const char *tls_label;          /* the policy level that chose tls, for log lines
                                     * and the result ("dane-only"); NULL: tls's name */
    const char *const *tls_match;   /* names the certificate must carry instead of
                                     * tls_name (ms_tls_policy.match); NULL/0: it */
    size_t tls_nmatch;
    const struct ms_tlsa *tlsa;     /* DANE: tls_name's usable, DNSSEC-validated TLSA
                                     * records (RFC 7672); they authenticate instead
                                     * of the CAs.  NULL/0: none */
    size_t ntlsa;
    wk_smtp_cache *cache;           /* reuse connections through it; NULL: never */
    unsigned max_msgs;              /* transactions per connection for this one's
                                     * destination (shaper.h); 0: the cache's */
    ms_conn_connect_fn *connect; /* how to connect; NULL: ms_conn_connect
                                     * (tests: a memory pair) */
    const char *auth_user;          /* AUTH as this user (RFC 4954); NULL: no AUTH */
    const char *auth_password;      /* with auth_user */
    int auth_plaintext;             /* allow AUTH without TLS (e.g. loopback) */
    unsigned auth_mechs;            /* MS_AUTH_MECH_* we may use; 0: PLAIN and LOGIN */
    int requiretls;                 /* RFC 8689 REQUIRETLS (see above) */
    int dsn_ret;                    /* RFC 3461 RET: enum ms_dsn_ret, 0: not given */
    const char *dsn_envid;          /* RFC 3461 ENVID, xtext-decoded; NULL or "": none */
    const uint32_t *dsn_notify;     /* per recipient: NOTIFY bits (ms_dsn.h), 0: not
                                     * given; NULL: none for anyone */
    const char *const *dsn_orcpt;   /* per recipient: ORCPT "type;address", the address
                                     * xtext-decoded; NULL or "": none; NULL: none */
    const char *const *rcpts;
    size_t nrcpts;
    const char *data;               /* CRLF lines, dot-unstuffed (any octets when
                                     * body_binarymime) */
    size_t len;
    void (*gate)(void *arg, uint64_t id); /* duplicate fencing (above); NULL: none */
};

struct wk_smtp_rcpt_result {
    int code;                       /* SMTP code, 0 when the server said nothing */
    char dsn[MS_REPLY_DSN_MAX + 1];
    char reply[WK_SMTP_REPLY_TEXT_MAX];
};

/* Longest TLS description: "TLSv1.3 TLS_AES_256_GCM_SHA384 verified". */
/* Longest policy label kept (a level name: "dane-only"). */
#define WK_SMTP_TLS_LABEL_MAX 16
#define WK_SMTP_TLS_INFO_MAX 96

struct wk_smtp_result {
    int err;                        /* 0, or why the session ended early (MS_E*) */
    const char *tls;                /* "" or protocol, cipher and "verified" or
                                     * "dane" */
    const char *tls_policy;         /* msg's tls_label, or the level used */
    int tls_auth;                   /* the server was authenticated: by its chain
                                     * and name (1) or by DANE (2); 0: not */
    int tls_result;                 /* for TLS reports (RFC 8460 §4.3.2): an enum
                                     * ms_tlsrpt_result, MS_TLSRPT_OK when TLS came
                                     * up with the server authenticated, the
                                     * certificate's fault when it came up
                                     * unauthenticated (whatever the policy), the
                                     * negotiation's when it did not; -1: STARTTLS
                                     * never came to be decided (policy none, no
                                     * EHLO, a reused connection) */
    const char *local_ip;           /* our address on the connection ("" for
                                     * UNIX-domain sockets or when not known) */
    int reused;                     /* the connection came from the cache */
    int tls_fallback;               /* `may`: TLS failed, delivered in plaintext */
    int dsn_offered;                /* the server offered DSN (RFC 3461) */
    int try_next;                   /* refused for what this server cannot do
                                     * (REQUIRETLS): another address may */
    int fenced;                     /* the gate refused: nothing was sent */
    uint64_t end_sent_ns;           /* uv_hrtime() when the octets ending the message
                                     * (the "." of DATA, BDAT LAST's last chunk) were
                                     * handed to the connection; 0: never sent */
    size_t nrcpts;
    const struct wk_smtp_rcpt_result *rcpts; /* valid during the callback */
};

typedef struct wk_smtp wk_smtp;
typedef void (*wk_smtp_cb)(void *arg, uint64_t id, const struct wk_smtp_result *res);

/* Start delivering msg to addr (AF_INET, AF_INET6, or AF_UNIX with a
 * NUL-terminated sun_path).  Returns 0 and the session in *out, or
 * MS_EINVAL for an address we refuse to put in a command, a tls_name over
 * 255 octets, a tls_label over WK_SMTP_TLS_LABEL_MAX - 1, more than
 * MS_TLS_MATCH_MAX names or MS_TLS_TLSA_MAX records, or credentials that are not wk_auth_field_ok() (the callback
 * is then not called). */
int wk_smtp_start(uv_loop_t *loop, const struct sockaddr *addr,
                  const struct wk_smtp_timeouts *timeouts, const struct wk_smtp_msg *msg,
                  wk_smtp_cb cb, void *arg, uint64_t id, wk_smtp **out);
/* The answer to msg->gate: deadline_ms (uv_now) until which the end of the
 * message may be sent, or 0 to give up without DATA (see above).  Call it
 * once per gate call, while the session is still the caller's. */
void wk_smtp_gate_answer(wk_smtp *s, uint64_t deadline_ms);
/* A renewed lease: the end of the message may now be sent until
 * deadline_ms (only ever later; a session past its gate only). */
void wk_smtp_extend(wk_smtp *s, uint64_t deadline_ms);
/* Abandon the session: the callback will not be called; the connection is
 * closed without QUIT and the session frees itself. */
void wk_smtp_cancel(wk_smtp *s);

/* 1 when addr may go into MAIL FROM / RCPT TO: at most MS_SMTP_ADDR_MAX
 * octets (the path with its "<>" fits MS_SMTP_PATH_MAX, ms_addr.h), no
 * controls, no angle brackets.  Pure. */
int wk_smtp_path_ok(const char *addr);

/* RFC 8689 §4.2.1: may a REQUIRETLS message go to this server, now that
 * its EHLO (after STARTTLS, if any) is known?  local: a UNIX-domain
 * socket; lmtp: final delivery; tls_verified: TLS is up and the
 * server authenticated: its certificate verified for its name, or a
 * DNSSEC-validated TLSA record of it matched (DANE, RFC 7672).  Pure. */
enum wk_requiretls {
    WK_REQUIRETLS_OK,
    WK_REQUIRETLS_NO_TLS,      /* no verified TLS: 5.7.10 */
    WK_REQUIRETLS_NOT_OFFERED  /* verified TLS, no REQUIRETLS keyword: 5.7.30 */
};
enum wk_requiretls wk_requiretls_check(int local, int lmtp, int tls_verified, unsigned ehlo_flags);

#endif

/*
 * ms_spf.h - Sender Policy Framework (RFC 7208): check_host() for the MAIL
 * FROM and the HELO identity, as a pull-style evaluator (see ms_dns.h).
 *
 * The evaluator never resolves anything and never blocks.  The caller drives
 * it:
 *
 *     ms_spf *s;
 *     struct ms_dns_query q;
 *     if (ms_spf_new(&s, &req) < 0) ...;
 *     while (ms_spf_step(s, &q) == MS_SPF_NEED_DNS) {
 *         ... resolve q.name / q.type however you like ...
 *         ms_spf_answer(s, &result);
 *     }
 *     use ms_spf_result(s), ms_spf_explanation(s), ms_spf_mechanism(s);
 *     ms_spf_free(s);
 *
 * Every answer is copied (bounded by MS_SPF_ANSWER_MAX), so the caller may
 * free its result as soon as ms_spf_answer() returns.  Internally the
 * evaluation is replayed from the start over the answers gathered so far each
 * time a step is taken; that keeps check_host() an ordinary recursive
 * function while staying resumable, and the replay is cheap because the
 * number of queries is small and bounded (MS_SPF_QUERIES_MAX).  Identical
 * queries are asked only once per evaluation.
 *
 * Purity: no I/O, no clock (the time for %{t} is passed in), no global state.
 * An ms_spf belongs to one thread or loop at a time; distinct objects may be
 * used concurrently.
 *
 * Query names are in presentation form without the trailing dot, but SPF
 * macros can put any printable ASCII byte (space included) into them; the
 * resolver glue must escape such bytes when it builds the wire form.  Names
 * that are not valid DNS names (an empty label or one over 63 octets) are
 * never asked: they are treated as non-existent (RFC 7208 §4.3, §4.8).
 *
 * Diagnostics: functions that can fail return 0 or a negative MS_E* code
 * (ms_error.h).  SPF's own verdicts (temperror, permerror) are results, not
 * errors: ms_spf_problem() says why one was reached.
 */
#ifndef MS_SPF_H
#define MS_SPF_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "ms_dns.h"

/* --- Limits.  Each is checked where the data arrives; exceeding one gives
 * the result named beside it, never a silent truncation. */

/* Longest SPF record evaluated (after joining its strings); longer records
 * are a permerror.  RFC 7208 §3.4 asks publishers to stay under 450 octets. */
#define MS_SPF_RECORD_MAX 4096
/* Most terms (mechanisms and modifiers) in one record; more is a permerror. */
#define MS_SPF_TERMS_MAX 256
/* Mechanisms and modifiers that cause DNS lookups (include, a, mx, ptr,
 * exists, redirect) per check_host(); the next one is a permerror (§4.6.4). */
#define MS_SPF_DNS_LOOKUPS_MAX 10
/* Lookups answering NXDOMAIN or no records; the next one is a permerror
 * (§4.6.4, the RECOMMENDED default). */
#define MS_SPF_VOID_LOOKUPS_MAX 2
/* MX records an "mx" mechanism may return; more is a permerror (§4.6.4). */
#define MS_SPF_MX_NAMES_MAX 10
/* PTR names looked at by "ptr" and %{p}; the rest are ignored (§4.6.4). */
#define MS_SPF_PTR_NAMES_MAX 10
/* Longest macro expansion of a domain-spec before §7.3's truncation to 253
 * octets; longer is a permerror. */
#define MS_SPF_EXPAND_MAX 4096
/* Longest explanation (exp= text after expansion); a longer one is ignored
 * as if there were no exp= (§6.2). */
#define MS_SPF_EXPLANATION_MAX 1024
/* Longest MAIL FROM address and HELO name accepted by ms_spf_new(); both
 * are bounded by the 512-octet SMTP command line (RFC 5321 §4.5.3.1.4).
 * Within them a name that cannot be a domain (longer than MS_DNS_NAME_MAX,
 * say) is not an error but the result none (§4.3), for either identity. */
#define MS_SPF_SENDER_MAX 512
#define MS_SPF_HELO_MAX 512
/* Distinct DNS queries per evaluation.  The limits above keep a conforming
 * evaluation far below this (about 130 at worst); reaching it is a
 * permerror and means a bug, not a hostile record. */
#define MS_SPF_QUERIES_MAX 256
/* Bytes and records kept from one DNS answer; a larger answer is treated as
 * a DNS error (temperror where RFC 7208 says so). */
#define MS_SPF_ANSWER_MAX 65536
#define MS_SPF_ANSWER_RR_MAX 4096

/* --- Results (RFC 7208 §2.6).  The names from ms_spf_result_name() are the
 * RFC 8601 result tokens for Authentication-Results. */
enum ms_spf_result {
    MS_SPF_NONE = 0,
    MS_SPF_NEUTRAL,
    MS_SPF_PASS,
    MS_SPF_FAIL,
    MS_SPF_SOFTFAIL,
    MS_SPF_TEMPERROR,
    MS_SPF_PERMERROR,
};

/* Which identity is checked (§2.3, §2.4).  For MS_SPF_HELO, and for
 * MS_SPF_MAILFROM with the null reverse-path, the sender is
 * "postmaster@<helo>". */
enum ms_spf_identity {
    MS_SPF_MAILFROM = 0,
    MS_SPF_HELO,
};

/* Mechanisms and modifiers; also what ms_spf_mechanism_kind() reports
 * (MS_SPF_MECH_NONE: no mechanism matched). */
enum ms_spf_mech {
    MS_SPF_MECH_NONE = 0,
    MS_SPF_MECH_ALL,
    MS_SPF_MECH_INCLUDE,
    MS_SPF_MECH_A,
    MS_SPF_MECH_MX,
    MS_SPF_MECH_PTR,
    MS_SPF_MECH_IP4,
    MS_SPF_MECH_IP6,
    MS_SPF_MECH_EXISTS,
    MS_SPF_MOD_REDIRECT,
    MS_SPF_MOD_EXP,
    MS_SPF_MOD_UNKNOWN,
};

struct ms_spf_request {
    enum ms_spf_identity identity;
    int family; /* AF_INET or AF_INET6; IPv4-mapped IPv6 is treated as IPv4 (§5) */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } ip;
    const char *helo;      /* HELO/EHLO argument as given; NULL for none */
    const char *mail_from; /* reverse-path without <>; NULL or "" for the null path */
    const char *receiver;  /* our host name for %{r}; NULL gives "unknown" */
    int64_t now;           /* seconds since the epoch, for %{t} */
};

typedef struct ms_spf ms_spf;

/* Return values of ms_spf_step(). */
#define MS_SPF_DONE 0
#define MS_SPF_NEED_DNS 1

/*
 * Start an evaluation.  The request is copied.  Fails with MS_EINVAL (bad
 * family, HELO identity without a HELO name) or MS_ETOOBIG (a non-null
 * mail_from over MS_SPF_SENDER_MAX for the MAIL FROM identity; helo over
 * MS_SPF_HELO_MAX for either identity, as %{h} needs it); *out is then
 * NULL.  A malformed domain is not an error: it yields the result none
 * (§4.3) before any DNS query.
 */
int ms_spf_new(ms_spf **out, const struct ms_spf_request *req);

/*
 * Advance.  Returns MS_SPF_NEED_DNS with *q filled (answer it with
 * ms_spf_answer(), then step again) or MS_SPF_DONE once the result is known.
 * Stepping again without answering repeats the same query; stepping after
 * MS_SPF_DONE returns MS_SPF_DONE.
 */
int ms_spf_step(ms_spf *s, struct ms_dns_query *q);

/*
 * Answer the query the last ms_spf_step() asked.  MS_DNS_TEMPFAIL and
 * MS_DNS_BOGUS are DNS errors (temperror where RFC 7208 says so).  Records
 * of other types than the one asked are ignored.  Returns MS_EINVAL when no
 * query is outstanding.
 */
int ms_spf_answer(ms_spf *s, const struct ms_dns_result *r);

/* Outcome, valid once ms_spf_step() has returned MS_SPF_DONE. */
enum ms_spf_result ms_spf_result(const ms_spf *s);
/* The expanded exp= explanation (only ever for fail, §6.2), or NULL when the
 * domain gave none: the caller then uses its own default. */
const char *ms_spf_explanation(const ms_spf *s);
/* The term that decided the result as written in the record, qualifier
 * included ("-all", "ip4:192.0.2.0/24", "include:_spf.example.net"), or NULL
 * when none matched.  After redirect= it is a term of the redirect target's
 * record; a matching include is reported as the include itself. */
const char *ms_spf_mechanism(const ms_spf *s);
enum ms_spf_mech ms_spf_mechanism_kind(const ms_spf *s);
/* The domain whose record decided the result (after redirects), or NULL. */
const char *ms_spf_domain(const ms_spf *s);
/* Why temperror or permerror was reached ("multiple SPF records", ...), or
 * NULL.  A static string. */
const char *ms_spf_problem(const ms_spf *s);
/* Number of DNS queries asked (for metrics). */
unsigned ms_spf_queries(const ms_spf *s);
void ms_spf_free(ms_spf *s);

/* "pass", "fail", ... ; "mx", "ip4", ..., "default" for MS_SPF_MECH_NONE. */
const char *ms_spf_result_name(enum ms_spf_result r);
const char *ms_spf_mech_name(enum ms_spf_mech m);

/* --- The record parser: pure, separate from evaluation, fuzzable. --- */

/* One term of a parsed record.  Pointers point into the parsed text, which
 * must outlive the record. */
struct ms_spf_term {
    enum ms_spf_mech kind;
    enum ms_spf_result qualifier; /* PASS, FAIL, SOFTFAIL or NEUTRAL; modifiers: PASS */
    const char *text;             /* the whole term as written */
    size_t text_len;
    const char *name; /* modifiers: the name (MS_SPF_MOD_UNKNOWN keeps it) */
    size_t name_len;
    const char *spec; /* domain-spec, macro-string or network; NULL if absent */
    size_t spec_len;
    int cidr4; /* prefix lengths; 32 and 128 when not written */
    int cidr6;
    struct in_addr ip4;  /* MS_SPF_MECH_IP4 */
    struct in6_addr ip6; /* MS_SPF_MECH_IP6 */
};

struct ms_spf_record {
    size_t n;
    struct ms_spf_term *terms; /* n terms, in order; owned */
    int redirect;              /* index of redirect= in terms, or -1 */
    int exp;                   /* index of exp=, or -1 */
};

/* Is this TXT string an SPF version 1 record ("v=spf1" then a space or the
 * end, case-insensitively; §4.5)? */
int ms_spf_is_record(const char *txt, size_t len);

/*
 * Parse a whole record (starting with "v=spf1") and check every term's syntax
 * (§4.6, §5, §6, §7.1), as check_host() does before evaluating.  Returns 0
 * with *out filled (free with ms_spf_record_free()), MS_EPROTO for a syntax
 * error (a permerror) or MS_ETOOBIG for a record over MS_SPF_RECORD_MAX or
 * MS_SPF_TERMS_MAX (also a permerror); *why (if not NULL) then names the
 * problem, *out is empty.
 */
int ms_spf_parse_record(const char *rec, size_t len, struct ms_spf_record *out, const char **why);
void ms_spf_record_free(struct ms_spf_record *r);

/*
 * Macro expansion (§7) of `spec` for request `req` with <domain> `domain`,
 * without DNS: %{p} expands to `p` (NULL gives "unknown").  `explain` allows
 * the explanation-only letters c, r, t and spaces.  Writes a NUL-terminated
 * string of at most outlen - 1 bytes.  Returns the length, MS_EPROTO for a
 * macro syntax error or MS_ETOOBIG when the result does not fit.  Domain
 * post-processing (§7.3 truncation) is not applied.
 */
int ms_spf_expand(const struct ms_spf_request *req, const char *domain, const char *p,
                  const char *spec, size_t len, int explain, char *out, size_t outlen);

#endif

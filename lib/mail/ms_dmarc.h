/*
 * ms_dmarc.h - DMARC (RFC 7489) policy evaluation as a pull-style evaluator
 * (see ms_dns.h), with libopendmarc parsing the record and choosing the
 * policy.  This module is the only one that includes libopendmarc.
 *
 * Division of labour:
 *
 *   - Policy discovery (§6.6.3) is ours: the evaluator asks for the TXT
 *     record at _dmarc.<From domain> and, when there is none, at
 *     _dmarc.<Organizational Domain>; the caller resolves it (the worker
 *     through lib/io/ms_resolver.h).  libopendmarc is never asked to query
 *     DNS (opendmarc_policy_query_dmarc() and _xdomain() are never called),
 *     so it never reaches res_query().
 *   - The Organizational Domain (§3.2) comes from our own Public Suffix List
 *     matcher (ms_psl_*, the list from Debian's `publicsuffix` package).
 *     libopendmarc 1.4's own PSL lookup (opendmarc_get_tld) mishandles
 *     names the list does not know (sub.example.test) and private-section
 *     suffixes (blogspot.com), so it is loaded with no list at all.
 *   - Identifier alignment (§3.1) is ours for the same reason: relaxed
 *     means equal Organizational Domains, strict means equal names.
 *   - libopendmarc parses the record (opendmarc_policy_store_dmarc()) and
 *     decides which policy applies (p, or sp when the record was found at
 *     the Organizational Domain) in opendmarc_get_policy_to_enforce(); it is
 *     given the authentication results with aligned passes stated under the
 *     From domain, so its verdict is the one RFC 7489 asks for.
 *   - pct (§6.6.4) is applied here with a number the caller draws (so tests
 *     are deterministic): a failing message is subject to the policy when
 *     sample < pct, otherwise the next weaker policy applies (reject ->
 *     quarantine, quarantine -> none).
 *
 * Usage:
 *
 *     ms_dmarc *d;
 *     struct ms_dns_query q;
 *     ms_dmarc_new(&d, &req);
 *     while (ms_dmarc_step(d, &q) == MS_DMARC_NEED_DNS)
 *         ms_dmarc_answer(d, resolve(&q));          // TXT q.name
 *     out = ms_dmarc_outcome(d);
 *     ms_dmarc_free(d);
 *
 * Threads: libopendmarc keeps global state initialised once (pthread_once);
 * an ms_dmarc object belongs to one thread at a time.  A loaded ms_psl is
 * read-only and may be shared.
 *
 * Errors follow ms_error.h; DMARC verdicts (temperror, permerror) are
 * results, not errors.
 */
#ifndef MS_DMARC_H
#define MS_DMARC_H

#include <stddef.h>
#include <stdint.h>

#include "ms_dkim.h"
#include "ms_dns.h"
#include "ms_spf.h"

/* Default location of the Public Suffix List (Debian package publicsuffix). */
#define MS_PSL_PATH "/usr/share/publicsuffix/public_suffix_list.dat"
/* Largest PSL file accepted, and most rules. */
#define MS_PSL_FILE_MAX (4 * 1024 * 1024)
#define MS_PSL_RULES_MAX 100000
/* Longest DMARC record evaluated; longer ones are a permerror. */
#define MS_DMARC_RECORD_MAX 2048
/* DKIM results given to one evaluation (more are ignored: the verifier
 * evaluates at most MS_DKIM_SIGS_MAX anyway). */
#define MS_DMARC_DKIM_MAX MS_DKIM_SIGS_MAX

/* ---- Public Suffix List ---- */

typedef struct ms_psl ms_psl;

/* Parse the list (the publicsuffix.org format: one rule per line, `//`
 * comments, `*.` wildcards, `!` exceptions).  MS_ETOOBIG past the limits. */
int ms_psl_parse(const char *data, size_t len, ms_psl **out);
/* Load a file; MS_EIO when it cannot be read. */
int ms_psl_load(const char *path, ms_psl **out);
void ms_psl_free(ms_psl *psl);
/*
 * The Organizational Domain of `domain` (RFC 7489 §3.2: the public suffix
 * plus one label; the implicit rule "*" applies when no rule matches),
 * lower-cased, without a trailing dot.  Returns 0, MS_ENOTFOUND when the
 * domain is itself a public suffix (it has none), MS_EINVAL for a name that
 * is not a domain (empty label, too long).
 */
int ms_psl_org_domain(const ms_psl *psl, const char *domain, char *out, size_t outlen);

/* ---- The RFC5322.From domain ---- */

/*
 * The domain of the single author address in the From field of a CRLF
 * message (RFC 7489 §6.6.1), lower-cased.  Returns 0; MS_ENOTFOUND: no From
 * field or no address in it; MS_EPROTO: several From fields, several
 * addresses with different domains, or an address that cannot be parsed
 * (DMARC then gives permerror).  Pure.
 */
int ms_dmarc_from_domain(const char *msg, size_t len, char *out, size_t outlen);

/* ---- The evaluator ---- */

enum ms_dmarc_result {
    MS_DMARC_NONE = 0, /* no policy published (or no From domain to look up) */
    MS_DMARC_PASS,
    MS_DMARC_FAIL,
    MS_DMARC_TEMPERROR,
    MS_DMARC_PERMERROR, /* malformed record or From field */
};

enum ms_dmarc_policy {
    MS_DMARC_POLICY_UNSET = 0,
    MS_DMARC_POLICY_NONE,
    MS_DMARC_POLICY_QUARANTINE,
    MS_DMARC_POLICY_REJECT,
};

struct ms_dmarc_dkim {
    const char *domain; /* d= */
    const char *selector;
    enum ms_dkim_result result;
};

struct ms_dmarc_request {
    const ms_psl *psl;       /* required */
    const char *from_domain; /* from ms_dmarc_from_domain(); NULL or "": none */
    int from_error;          /* the MS_E* code ms_dmarc_from_domain() gave, or 0 */
    /* The SPF-authenticated identifier (§3.1.2): the MAIL FROM domain, or
     * the HELO name for the null reverse-path, and its SPF result. */
    const char *spf_domain;
    enum ms_spf_result spf;
    int spf_helo; /* spf_domain is the HELO identity */
    const struct ms_dmarc_dkim *dkim;
    size_t ndkim;
    unsigned sample; /* 0..99, drawn by the caller for pct */
};

struct ms_dmarc_outcome {
    enum ms_dmarc_result result;
    /* The policy published for this message (p, or sp for a subdomain when
     * the record came from the Organizational Domain); UNSET without one. */
    enum ms_dmarc_policy policy;
    /* What to do after pct: policy for a failing message when sampled,
     * the next weaker one otherwise; NONE for pass; UNSET without policy. */
    enum ms_dmarc_policy disposition;
    int used_sp;          /* policy came from sp= */
    int pct;              /* 100 when absent */
    int sampled_out;      /* pct made the disposition weaker */
    int adkim_strict, aspf_strict;
    int dkim_aligned;     /* an aligned DKIM pass */
    int spf_aligned;      /* an aligned SPF pass */
    const char *from_domain;   /* "" when none */
    const char *org_domain;    /* of the From domain, "" when none */
    const char *record_domain; /* where the record was found, "" when none */
    const char *problem;       /* why temperror or permerror, or NULL */
};

typedef struct ms_dmarc ms_dmarc;

#define MS_DMARC_DONE 0
#define MS_DMARC_NEED_DNS 1

/* Is libopendmarc linked in?  (XXX: transitional, see ms_dmarc.c.) */
int ms_dmarc_available(void);

/* Start; the request's strings are copied.  MS_EINVAL without a PSL,
 * MS_EUNAVAIL when libopendmarc is not linked in. */
int ms_dmarc_new(ms_dmarc **out, const struct ms_dmarc_request *req);
/* MS_DMARC_NEED_DNS with *q (a TXT query), or MS_DMARC_DONE. */
int ms_dmarc_step(ms_dmarc *d, struct ms_dns_query *q);
/* Answer the last query; MS_EINVAL when none is outstanding. */
int ms_dmarc_answer(ms_dmarc *d, const struct ms_dns_result *r);
/* Valid after MS_DMARC_DONE, as long as d. */
const struct ms_dmarc_outcome *ms_dmarc_outcome(const ms_dmarc *d);
void ms_dmarc_free(ms_dmarc *d);

/* "none", "pass", "fail", "temperror", "permerror" (RFC 8601 tokens). */
const char *ms_dmarc_result_name(enum ms_dmarc_result r);
/* "", "none", "quarantine", "reject". */
const char *ms_dmarc_policy_name(enum ms_dmarc_policy p);

/* Are a and b aligned (RFC 7489 §3.1): equal names (strict), or equal
 * Organizational Domains (relaxed)?  Case-insensitive; trailing dots
 * ignored. */
int ms_dmarc_aligned(const ms_psl *psl, const char *a, const char *b, int strict);

#endif

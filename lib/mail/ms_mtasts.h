/*
 * ms_mtasts.h - MTA-STS (RFC 8461) as text: the _mta-sts TXT record, the
 * policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt,
 * and the MX patterns of a policy matched against an MX host name.
 *
 * Pure functions over (buf, len): no DNS, no HTTP, so they are unit-tested
 * and fuzzed alone (tests/fuzz/fuzz_mtasts.c).  Any thread.  Errors:
 * MS_EINVAL for text that is not what the RFC describes (the caller then
 * has no policy, §3.1, §3.2); nothing is allocated.
 */
#ifndef MS_MTASTS_H
#define MS_MTASTS_H

#include <stddef.h>
#include <stdint.h>

#include "ms_dns.h"

/* §3.1: id is 1 to 32 letters and digits. */
#define MS_MTASTS_ID_MAX 32
/* §3.2: max_age is at most 31557600 seconds (about a year). */
#define MS_MTASTS_MAX_AGE_MAX 31557600
/* MX patterns kept per policy; more make the policy invalid (a real
 * policy lists a handful). */
#define MS_MTASTS_MX_MAX 32
/* Longest policy file taken (§3.3 leaves it to the sender; 64 KiB is
 * Postfix's postfix-mta-sts-resolver's and far above any real policy). */
#define MS_MTASTS_POLICY_MAX 65536

enum ms_mtasts_mode {
    MS_MTASTS_NONE,     /* "none": the domain withdrew its policy */
    MS_MTASTS_TESTING,  /* report failures, deliver anyway */
    MS_MTASTS_ENFORCE,  /* only to matching MX hosts, with verified TLS */
};

/* §3.1: the TXT record at _mta-sts.<domain>: "v=STSv1; id=...;" and other
 * fields ignored.  Copies id (NUL-terminated) into id[MS_MTASTS_ID_MAX + 1].
 * 0, or MS_EINVAL (no v=STSv1 first, no valid id, a malformed field). */
int ms_mtasts_txt_parse(const char *txt, size_t len, char *id);

/* One field of a TXT record of the form "field *WSP ";" *WSP field ..."
 * (§3.1's sts-field-delim; RFC 8460 §3's field-delim is the same): from
 * *p, the field with the blanks around it cut, [*f, *fe) (empty for ";;"
 * or a trailing ';'); *p moves past its ';'.  1, or 0 at end. */
int ms_mtasts_field_next(const char **p, const char *end, const char **f, const char **fe);

/* The TXT answer as a whole: the records starting with "v=STSv1"; exactly
 * one must be (§3.1: more than one means no policy).  0 with its id, or
 * MS_EINVAL (none, several, or the one is invalid). */
int ms_mtasts_txt_pick(const struct ms_dns_result *res, char *id);

struct ms_mtasts_policy {
    enum ms_mtasts_mode mode;
    uint32_t max_age;                   /* seconds */
    size_t nmx;
    char mx[MS_MTASTS_MX_MAX][MS_DNS_NAME_MAX + 1]; /* lower case */
};

/* §3.2: the policy file: "key: value" lines ending in CRLF or LF, in any
 * order; "version: STSv1", mode and max_age required exactly once each, mx
 * at least once unless mode is none (each a domain, "*." allowed first);
 * other keys ignored (§3.2: extensions).  0, or MS_EINVAL; over
 * MS_MTASTS_POLICY_MAX octets: MS_ETOOBIG. */
int ms_mtasts_policy_parse(const char *text, size_t len, struct ms_mtasts_policy *p);

/* §4.1: does MX host `host` (any case, trailing dot or not) match one of
 * the policy's patterns ("mail.example.com", or "*.example.com" for
 * exactly one more leftmost label)?  1 or 0. */
int ms_mtasts_mx_match(const struct ms_mtasts_policy *p, const char *host);

const char *ms_mtasts_mode_name(enum ms_mtasts_mode m);

#endif

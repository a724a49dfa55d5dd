/*
 * ms_tlsrpt.h - SMTP TLS Reporting (RFC 8460) as text: the _smtp._tls TXT
 * record, the counters a sending MTA keeps per policy domain and period
 * (their field names in the cluster's Redis hash), the aggregate report
 * (§4 JSON), its gzip form, its file name (§5.3) and the mail that
 * carries it (§5.3: multipart/report; report-type="tlsrpt").
 *
 * Pure functions over (buf, len): no DNS, no Redis, no HTTP, so they are
 * unit-tested (tests/unit/test_tlsrpt.c) and the TXT parser fuzzed
 * (tests/fuzz/fuzz_tlsrpt.c) alone.  Any thread.  Nothing is kept between
 * calls; output goes to the caller's struct ms_buf.  Errors: MS_EINVAL for
 * text that is not what the RFC describes, MS_ETOOBIG past a named limit
 * or the buffer's maximum, MS_ENOMEM when zlib cannot start.
 */
#ifndef MS_TLSRPT_H
#define MS_TLSRPT_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"
#include "ms_dns.h"

/* Report URIs kept from one record (a domain lists one or two). */
#define MS_TLSRPT_RUA_MAX 8
/* Longest URI taken (mailto: an address of 254 octets and a little). */
#define MS_TLSRPT_URI_MAX 512
/* Lines of one policy-string kept (an MTA-STS policy of MS_MTASTS_MX_MAX
 * patterns and its three other lines, or MS_TLS_TLSA_MAX TLSA records). */
#define MS_TLSRPT_POLICY_LINES_MAX 40
/* Policies (policy type and MX host) and failure details in one report;
 * more are an error, never a report silently cut short. */
#define MS_TLSRPT_POLICIES_MAX 64
#define MS_TLSRPT_DETAILS_MAX 256
/* Longest counter field name (ms_tlsrpt_field): the kind, the policy type,
 * two host names, two IP literals and a result type. */
#define MS_TLSRPT_FIELD_MAX 640
/* Largest JSON report built (a day of a busy domain stays far below). */
#define MS_TLSRPT_JSON_MAX (1024 * 1024)

/* §4.3.1: the policy a session was judged by. */
enum ms_tlsrpt_policy {
    MS_TLSRPT_POLICY_STS,  /* "sts": MTA-STS (RFC 8461) */
    MS_TLSRPT_POLICY_TLSA, /* "tlsa": DANE (RFC 7672) */
    MS_TLSRPT_POLICY_NONE, /* "no-policy-found" */
};
#define MS_TLSRPT_POLICIES_N 3

/* §4.3.2: how a session ended; MS_TLSRPT_OK counts as successful. */
enum ms_tlsrpt_result {
    MS_TLSRPT_OK,
    MS_TLSRPT_STARTTLS_NOT_SUPPORTED, /* §4.3.2.1 negotiation failures */
    MS_TLSRPT_CERT_HOST_MISMATCH,
    MS_TLSRPT_CERT_EXPIRED,
    MS_TLSRPT_CERT_NOT_TRUSTED,
    MS_TLSRPT_VALIDATION_FAILURE,
    MS_TLSRPT_TLSA_INVALID, /* §4.3.2.2 DANE */
    MS_TLSRPT_DNSSEC_INVALID,
    MS_TLSRPT_DANE_REQUIRED,
    MS_TLSRPT_STS_FETCH_ERROR, /* §4.3.2.3 MTA-STS */
    MS_TLSRPT_STS_INVALID,
    MS_TLSRPT_STS_WEBPKI_INVALID,
};
#define MS_TLSRPT_RESULTS_N 12

/* "sts", "tlsa", "no-policy-found"; the §4.3.2 result-type names
 * ("starttls-not-supported", ...; "success" for MS_TLSRPT_OK, which is
 * never a result-type in a report). */
const char *ms_tlsrpt_policy_name(enum ms_tlsrpt_policy p);
const char *ms_tlsrpt_result_name(enum ms_tlsrpt_result r);
/* The name back to the value, or -1. */
int ms_tlsrpt_policy_parse(const char *s, size_t len);
int ms_tlsrpt_result_parse(const char *s, size_t len);

/* ---- §3: the TXT record at _smtp._tls.<policy domain> ---- */

struct ms_tlsrpt_rua {
    size_t n;
    char uri[MS_TLSRPT_RUA_MAX][MS_TLSRPT_URI_MAX + 1]; /* "mailto:..." or "https://..." */
};

/* "v=TLSRPTv1; rua=URI[,URI...]" and extension fields (ignored): the
 * version first, rua exactly once with at least one URI.  URIs of other
 * schemes than mailto: and https: are skipped (§3: only those two are
 * defined); a record left with none is MS_EINVAL.  0 and out, or
 * MS_EINVAL. */
int ms_tlsrpt_txt_parse(const char *txt, size_t len, struct ms_tlsrpt_rua *out);
/* The TXT answer as a whole: records not starting with "v=TLSRPTv1" are
 * discarded; exactly one must remain and parse (§3), else MS_EINVAL (the
 * domain does not want reports). */
int ms_tlsrpt_txt_pick(const struct ms_dns_result *res, struct ms_tlsrpt_rua *out);

/* ---- the counters: hash fields of one policy domain and period ---- */

/* What one session (or one policy fetch) contributes.  mx: the MX host name
 * for tlsa and no-policy-found, "" for sts (whose MX hosts are the
 * policy's patterns).  Failures name the failure-details (§4.3.2):
 * sending_ip, receiving_mx, receiving_ip (NULL or "": not known). */
struct ms_tlsrpt_session {
    enum ms_tlsrpt_policy policy;
    const char *mx;
    enum ms_tlsrpt_result result;
    const char *sending_ip, *receiving_mx, *receiving_ip;
};

/* The field to HINCRBY by one for s: "S\t<policy>\t<mx>" for a success,
 * "F\t<policy>\t<mx>\t<result>\t<sending ip>\t<receiving mx>\t<receiving
 * ip>" for a failure.  Names with a tab, CR or LF are refused.  0 and the
 * NUL-terminated field in out[MS_TLSRPT_FIELD_MAX + 1], or MS_EINVAL /
 * MS_ETOOBIG. */
int ms_tlsrpt_field(const struct ms_tlsrpt_session *s, char *out);
/* The field holding the policy-string of (policy, mx): "P\t<policy>\t<mx>",
 * its value the policy's lines joined by LF (HSET: the latest wins). */
int ms_tlsrpt_policy_field(enum ms_tlsrpt_policy p, const char *mx, char *out);

/* ---- §4: the report ---- */

struct ms_tlsrpt_kv {
    const char *key, *value; /* a hash field and its value (HGETALL) */
    size_t klen, vlen;
};

struct ms_tlsrpt_report {
    const char *organization; /* organization-name */
    const char *contact;      /* contact-info */
    const char *report_id;
    int64_t begin, end;                /* the period, seconds since the epoch: [begin, end) */
    const char *domain;                /* the policy domain */
    const struct ms_tlsrpt_kv *fields; /* the period's hash */
    size_t nfields;
};

/* Build the §4.4 JSON for r into out: one "policies" entry per policy type
 * and MX host counted (sts: one, its mx-host the policy's mx patterns),
 * with its summary and failure-details.  Fields that are not ours (or
 * whose counts are not positive integers) are skipped.  0, MS_EINVAL (no
 * session counted: no report), MS_ETOOBIG (more than
 * MS_TLSRPT_POLICIES_MAX or MS_TLSRPT_DETAILS_MAX, or past out's max). */
int ms_tlsrpt_report_json(const struct ms_tlsrpt_report *r, struct ms_buf *out);

/* gzip (RFC 1952) of in into out: §5.3 and §5.4 send application/tlsrpt+gzip. */
int ms_tlsrpt_gzip(const void *in, size_t len, struct ms_buf *out);

/* §5.3's file name: "<submitter>!<policy domain>!<begin>!<end>!<unique
 * id>.json.gz" (end: the last second of the period), into out (size
 * outlen).  unique_id: letters and digits only.  0 or MS_EINVAL /
 * MS_ETOOBIG. */
int ms_tlsrpt_filename(const char *submitter, const char *domain, int64_t begin, int64_t end,
                       const char *unique_id, char *out, size_t outlen);

/* ---- §5.3: the report as mail ---- */

struct ms_tlsrpt_mail {
    const char *from;      /* the report sender's address */
    const char *to;        /* the mailto: rua's address */
    const char *domain;    /* the policy domain: TLS-Report-Domain */
    const char *submitter; /* our domain: TLS-Report-Submitter */
    const char *report_id; /* "<id-left>@<id-right>" (Subject, Message-ID) */
    int64_t now;           /* Date: */
    const char *filename;  /* ms_tlsrpt_filename() */
    const void *gz;        /* the gzipped report */
    size_t gzlen;
};

/* The RFC 5322 message (CRLF lines): From, To, Date, Message-ID,
 * §5.3's Subject ("Report Domain: ... Submitter: ... Report-ID: <...>"),
 * TLS-Report-Domain and TLS-Report-Submitter, a multipart/report;
 * report-type="tlsrpt" body with a text/plain part and the report as
 * application/tlsrpt+gzip in base64.  Addresses and names with CR, LF or
 * other controls are MS_EINVAL. */
int ms_tlsrpt_mail_build(const struct ms_tlsrpt_mail *m, struct ms_buf *out);

/* The media type of a gzipped report (§6.4, §6.5). */
#define MS_TLSRPT_MEDIA_GZIP "application/tlsrpt+gzip"

#endif

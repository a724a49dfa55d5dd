/*
 * classify.h - bounce classification: which kind of failure a remote reply
 * reports (bad mailbox, bad domain, policy block, rate limit, quota,
 * content, routing, TLS, network, transient, other), from rules in a YAML
 * file ([delivery] bounce_rules_file; the shipped set is
 * etc/bounce-rules.yaml), and the reply patterns those rules and the
 * shaping file's backoff rules (shaping.h) are made of.
 *
 * A rule file:
 *
 *   suppress: [bad_mailbox, bad_domain]   # categories whose hard bounces
 *                                         # feed the suppression list
 *   rules:                                # first match wins
 *     - category: bad_mailbox
 *       code: 5xx                         # "550", "55x", "5xx"; or a list
 *       enhanced: "*.1.1"                 # "5.1.1", "*.1.1", "5.7.*"; or a list
 *       text: "user unknown|no such user" # POSIX extended regex, any case
 *
 * A rule matches when every field it has matches (no field: every reply).
 * A reply no rule matches falls back to RFC 3463's subjects and details of
 * its enhanced status code, then to its reply code (wk_classify()).
 *
 * Replies come from remote servers, so the matcher takes any bytes: the
 * text is only ever given to regexec(), patterns are compiled once when the
 * file is loaded (a rule file's regex is checked then, never per reply),
 * and code and enhanced code, the cheap tests, come first.  A 2yz reply is
 * never matched (category "none").
 *
 * Ownership: a wk_classifier is immutable once loaded; the worker replaces
 * it whole on SIGHUP.  Pure; any thread may use a loaded classifier.
 */
#ifndef WK_CLASSIFY_H
#define WK_CLASSIFY_H

#include <regex.h>
#include <stddef.h>

#include "ms_yaml.h"

#define WK_CATEGORY_MAP(X)                                                       \
    X(NONE, "none")               /* a 2yz: nothing failed */                    \
    X(BAD_MAILBOX, "bad_mailbox") /* the mailbox does not exist, or is disabled */ \
    X(BAD_DOMAIN, "bad_domain")   /* the domain does not exist or takes no mail */ \
    X(POLICY, "policy")           /* refused for who we are: spam, reputation, auth */ \
    X(RATE_LIMIT, "rate_limit")   /* too much, too fast: slow down */            \
    X(QUOTA, "quota")             /* mailbox full */                             \
    X(CONTENT, "content")         /* refused for what the message is: size, format */ \
    X(ROUTING, "routing")         /* relaying denied, loops, wrong server */     \
    X(TLS, "tls")                 /* TLS required or failed */                   \
    X(NETWORK, "network")         /* no answer, broken connection, DNS */        \
    X(TRANSIENT, "transient")     /* a temporary failure with no more said */    \
    X(OTHER, "other")

enum wk_category {
#define X(name, str) WK_CAT_##name,
    WK_CATEGORY_MAP(X)
#undef X
        WK_CAT__N
};

const char *wk_category_name(enum wk_category c);
/* The category named s, or -1. */
int wk_category_parse(const char *s);

/* ---- reply patterns (shared with shaping.h) ---- */

/* Alternatives per field of one pattern. */
#define WK_PAT_ALTS_MAX 16
/* Longest text regex. */
#define WK_PAT_REGEX_MAX 1024

struct wk_reply_pat {
    int ncode;
    struct {
        int value;  /* leading digits of the reply code */
        int digits; /* how many: 1 ("5xx"), 2 ("55x"), 3 ("550") */
    } code[WK_PAT_ALTS_MAX];
    int nenh;
    int enh[WK_PAT_ALTS_MAX][3]; /* class, subject, detail; -1: any */
    int has_re;
    regex_t re;
};

/* The fields code, enhanced and text of mapping `m` into *p (none of them
 * is fine: a pattern that matches every reply).  Other keys are the
 * caller's.  0, or MS_EINVAL with the reason in err. */
int wk_reply_pat_parse(const struct ms_yaml_node *m, struct wk_reply_pat *p, char *err,
                       size_t errlen);
void wk_reply_pat_free(struct wk_reply_pat *p);
/* Does the reply (code; its enhanced status code split by
 * wk_enhanced_split(), -1s when absent; text, NUL-terminated) match? */
int wk_reply_pat_match(const struct wk_reply_pat *p, int code, const int enh[3],
                       const char *text);
/* "5.1.1" into enh; 0, or -1 with enh all -1 when dsn is not one
 * (RFC 3463 §2: class "." subject "." detail, 1-3 digits each). */
int wk_enhanced_split(const char *dsn, int enh[3]);

/* ---- the classifier ---- */

/* Rules in one file, at most. */
#define WK_CLASSIFY_RULES_MAX 512

typedef struct wk_classifier wk_classifier;

/* Parse a rule file's text, or load it from path.  0, or MS_EINVAL /
 * MS_ETOOBIG / MS_EIO with the reason in err. */
int wk_classifier_parse(const char *buf, size_t len, wk_classifier **out, char *err,
                        size_t errlen);
int wk_classifier_load(const char *path, wk_classifier **out, char *err, size_t errlen);
void wk_classifier_free(wk_classifier *c);
/* Rules loaded. */
size_t wk_classifier_rules(const wk_classifier *c);

/* The category of a reply: code (0: none came, our own diagnostic), its
 * enhanced status code (NULL or "" when absent) and text.  c NULL: the
 * RFC 3463 fallback alone. */
enum wk_category wk_classify(const wk_classifier *c, int code, const char *dsn, const char *text);
/* Does a hard bounce of category cat add the recipient to the suppression
 * list?  c NULL: bad_mailbox and bad_domain. */
int wk_classifier_suppresses(const wk_classifier *c, enum wk_category cat);

#endif

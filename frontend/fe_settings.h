/*
 * fe_settings.h - the frontend's settings: [node], [smtp], [kafka],
 * [ratelimit], [milter] (fe_milter.h), [format.mx] and [format.submission] read from the config into one struct (the [listener.*]
 * sections are read where the listeners are opened, fe_listen.h), with every
 * named limit, its default and its name (docs/config.md lists the keys).
 *
 * Ownership: fe_settings_load() fills a struct that owns its lists (accepted
 * domains, trusted and PROXY networks) until fe_settings_free(); its strings
 * point into the ms_config, which must outlive it.
 *
 * Threads: each loop loads its own copy on the main thread before the loops
 * start; afterwards it is read-only, and only its own loop reads it.
 *
 * Errors: MS_ECONFIG with the section, key and what is wanted in `err`; the
 * struct is then only fit for fe_settings_free().
 */
#ifndef FE_SETTINGS_H
#define FE_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

#include "fe_access.h"
#include "fe_verify.h"
#include "fe_header.h"
#include "fe_milter.h"
#include "fe_ratelimit.h"
#include "ms_config.h"
#include "ms_domainmap.h"

/* Named limits and their defaults ([smtp] keys in parentheses). */
#define FE_MAX_RECIPIENTS_DEF 1000 /* (max_recipients) 452 4.5.3 Too many recipients */
#define FE_MAX_ERRORS_DEF 10       /* (max_errors) 421 4.7.0 Too many errors */
#define FE_COMMAND_TIMEOUT_DEF 300 /* s (command_timeout) RFC 5321 4.5.3.2.7; 421 4.4.2 */
#define FE_GREETING_TIMEOUT_DEF 60 /* s (greeting_timeout) idle before HELO/EHLO; 421 4.4.2 */
#define FE_DRAIN_TIMEOUT_DEF 30    /* s (drain_timeout) SIGTERM grace period */
#define FE_ENVELOPE_HEADROOM (1024 * 1024) /* Kafka record = message + envelope */
#define FE_MAX_CONNECTIONS_DEF 10000   /* (max_connections) 421 4.7.0 */
#define FE_MAX_CONN_PER_IP_DEF 50      /* (max_connections_per_ip) 421 4.7.0 */
#define FE_MAX_COMMANDS_DEF 100000     /* (max_commands) per session: 421 4.7.0 */
#define FE_MAX_PENDING_DEF 2000        /* (max_pending_messages) awaiting Kafka: back-pressure */
#define FE_LINGER_MS_DEF 1             /* [kafka] linger_ms */
#define FE_BATCH_LINGER_MS_MAX 100     /* [kafka] batch_linger_ms: a 250 waits that long */
#define FE_RL_TIMEOUT_DEF 2000         /* ms ([ratelimit] timeout_ms) then as if Redis were down */
#define FE_ACCEPTED_DOMAINS_MAX 1024
#define FE_HOSTNAME_MAX 255 /* [node] hostname, a domain name (RFC 1035 2.3.4) */
#define FE_TRUSTED_NETWORKS_MAX 1024

/* The rate limits in Redis ([ratelimit] keys, fe_ratelimit.h). */
enum fe_rate_kind {
    FE_RATE_CONN_IP,       /* connections_per_ip: 421 4.7.0 */
    FE_RATE_MSG_USER,      /* messages_per_user (authenticated): 451 4.7.1 at MAIL */
    FE_RATE_MSG_DOMAIN,    /* messages_per_domain (sender domain): 451 4.7.1 at MAIL */
    FE_RATE_RCPT_CLIENT,   /* recipients_per_client (user, else IP): 451 4.7.1 at RCPT */
    FE_RATE_AUTHFAIL_IP,   /* auth_failures_per_ip: 454 4.7.0 */
    FE_RATE_AUTHFAIL_USER, /* auth_failures_per_user: 454 4.7.0 */
    FE_RATE_COUNT
};

/* Every named limit, for the limit-hit metric. */
enum fe_limit {
    FE_LIMIT_CONNECTIONS = FE_RATE_COUNT, /* max_connections */
    FE_LIMIT_CONN_PER_IP,                 /* max_connections_per_ip */
    FE_LIMIT_COMMANDS,                    /* max_commands */
    FE_LIMIT_BACKPRESSURE,                /* max_pending_messages */
    FE_LIMIT_COUNT
};
/* The config key of an enum fe_rate_kind or enum fe_limit ("?" for others). */
const char *fe_limit_name(int limit);

struct fe_settings {
    const char *node_id;
    const char *hostname;
    const char *topic;
    const char *events_topic;   /* [kafka] events_topic: accepted/refused events; "": none */
    uint64_t kafka_linger_ms;           /* [kafka] linger_ms */
    const char *kafka_compression;      /* [kafka] compression: producer compression.type */
    int group_commit;                   /* [kafka] group_commit (fe_commit.h) */
    uint64_t group_commit_window_us;    /* [kafka] group_commit_window_us */
    uint64_t batch_linger_ms;           /* [kafka] batch_linger_ms */
    uint64_t max_message_size;
    uint64_t max_recipients;
    uint64_t max_errors;
    uint64_t command_timeout_ms;
    uint64_t greeting_timeout_ms;
    uint64_t drain_timeout_ms;
    /* Domains the MX listener takes mail for: exact names and ".parent"
     * keys (ms_domainmap.h); values unused. */
    ms_domainmap *accepted_domains;
    struct fe_cidr *trusted;
    size_t ntrusted;
    struct fe_cidr *proxy_trusted; /* peers allowed to send a PROXY header */
    size_t nproxy_trusted;
    /* 0 (only outside the config, e.g. tests): no limit. */
    uint64_t max_connections, max_connections_per_ip, max_commands, max_pending;
    struct fe_rate rates[FE_RATE_COUNT];
    const char *rl_prefix;       /* [ratelimit] key_prefix */
    int rl_fail_closed;          /* [ratelimit] redis_failure = closed */
    uint64_t rl_timeout_ms;
    int refuse_suppressed;       /* [smtp] refuse_suppressed */
    const char *suppress_prefix; /* the worker's ms:suppress: */
    /* The header section (fe_header.h): [smtp] max_header_size,
     * max_header_fields, max_header_field_length. */
    struct fe_hdr_limits hdr_limits;
    /* [format.mx] and [format.submission] (also for submissions). */
    struct fe_format_rules format_mx, format_submission;
    /* [smtp] recipient_lists: accepted domains whose recipients must be in
     * the Redis set MS_KEY_RECIPIENTS<domain> (relay_recipient_maps);
     * NULL: none. */
    ms_domainmap *recipient_lists;
    /* [verify]: recipients checked by a probe of their next hop
     * (fe_verify.h); verify.map NULL: none. */
    struct fe_verify_conf verify;
    /* [milter]: the content filters of sessions on listeners with
     * `milters = yes` (fe_milter.h). */
    struct fe_milter_conf milter;
};

/* Read [node], [smtp], [kafka], [ratelimit], [verify] and [format.*].  Returns 0 or MS_ECONFIG
 * with the reason in err. */
int fe_settings_load(struct fe_settings *set, const ms_config *cfg, char *err, size_t errlen);
void fe_settings_free(struct fe_settings *set);
/* 1 when some [ratelimit] limit, refuse_suppressed, a recipient list or
 * the verification cache needs Redis. */
int fe_settings_need_redis(const struct fe_settings *set);

#endif

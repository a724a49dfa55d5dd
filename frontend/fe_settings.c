/*
 * fe_settings.c - the frontend's settings from the config (see
 * fe_settings.h).
 */
#include "fe_settings.h"
#include "fe_commit.h"
#include "ms_error.h"
#include "ms_kafka.h"
#include "ms_keys.h"
#include "ms_mem.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int get_u64(const ms_config *cfg, const char *sec, const char *key, int64_t def,
                   int64_t min, int64_t max, uint64_t *out, char *err, size_t errlen)
{
    int64_t v;

    if (ms_config_get_int(cfg, sec, key, def, min, max, &v) < 0) {
        snprintf(err, errlen, "[%s] %s: want an integer in [%lld, %lld]", sec, key,
                 (long long)min, (long long)max);
        return MS_ECONFIG;
    }
    *out = (uint64_t)v;
    return 0;
}

/* [smtp] `key`, a comma-separated list of networks, into *nets (freed by
 * fe_settings_free(), also after an error) and its length *n. */
static int get_networks(const ms_config *cfg, const char *key, struct fe_cidr **nets, size_t *n,
                        char *err, size_t errlen)
{
    char *copy = ms_strdup(ms_config_get(cfg, "smtp", key, "")), *items[FE_TRUSTED_NETWORKS_MAX];
    size_t count = ms_config_split_list(copy, items, FE_TRUSTED_NETWORKS_MAX), i;
    int r = 0;

    *nets = ms_calloc(count ? count : 1, sizeof(**nets));
    for (i = 0; i < count && r == 0; i++)
        if (fe_cidr_parse(items[i], &(*nets)[i]) < 0) {
            snprintf(err, errlen, "[smtp] %s: bad network \"%s\"", key, items[i]);
            r = MS_ECONFIG;
        }
    if (r == 0)
        *n = count;
    free(copy);
    return r;
}

/* Config key and default of each enum fe_rate_kind, in order. */
static const char *const rate_keys[FE_RATE_COUNT] = {
    "connections_per_ip", "messages_per_user",    "messages_per_domain",
    "recipients_per_client", "auth_failures_per_ip", "auth_failures_per_user",
};
static const char *const rate_defaults[FE_RATE_COUNT] = {"0", "0", "0", "0", "30/10m", "10/10m"};
static const char *const local_limit_names[FE_LIMIT_COUNT - FE_RATE_COUNT] = {
    "max_connections", "max_connections_per_ip", "max_commands", "max_pending_messages"};

const char *fe_limit_name(int limit)
{
    if (limit >= 0 && limit < FE_RATE_COUNT)
        return rate_keys[limit];
    if (limit >= FE_RATE_COUNT && limit < FE_LIMIT_COUNT)
        return local_limit_names[limit - FE_RATE_COUNT];
    return "?";
}

int fe_settings_need_redis(const struct fe_settings *set)
{
    int i;

    for (i = 0; i < FE_RATE_COUNT; i++)
        if (set->rates[i].n > 0)
            return 1;
    return set->refuse_suppressed || set->recipient_lists != NULL || set->verify.map != NULL;
}

/* The keys of a [format.ROLE] section, in struct fe_format_rules, and their
 * defaults for MX and for submission (docs/config.md). */
static const struct {
    const char *key;
    size_t off;
    int mx, submission;
} format_keys[] = {
    /* A line in the header section that is neither a field nor a
     * continuation: the section's end is unclear to every reader. */
    {"header_syntax", offsetof(struct fe_format_rules, header_syntax), 1, 1},
    /* Postfix accepts 8-bit mail without the extensions on MX
     * (strict_8bitmime = no); a submission client can declare them. */
    {"eightbit_header", offsetof(struct fe_format_rules, eightbit_header), 0, 1},
    {"eightbit_body", offsetof(struct fe_format_rules, eightbit_body), 0, 1},
    /* RFC 5322 3.6: From is required; mail that lacks it still arrives
     * from the Internet and is taken on MX, not from our own users. */
    {"from_missing", offsetof(struct fe_format_rules, from_missing), 0, 1},
    /* Two From fields: a DMARC checker and a mail reader may see two
     * different authors. */
    {"from_duplicate", offsetof(struct fe_format_rules, from_duplicate), 1, 1},
    {"field_duplicate", offsetof(struct fe_format_rules, field_duplicate), 1, 1},
    {"address_syntax", offsetof(struct fe_format_rules, address_syntax), 1, 1},
    /* From of an authenticated session among the user's senders. */
    {"from_owned", offsetof(struct fe_format_rules, from_owned), 1, 1},
    /* RFC 6409 8.2, 8.3: a submission server may add them. */
    {"add_date", offsetof(struct fe_format_rules, add_date), 0, 1},
    {"add_message_id", offsetof(struct fe_format_rules, add_message_id), 0, 1},
};

static int get_format(const ms_config *cfg, const char *sec, int submission,
                      struct fe_format_rules *rules, char *err, size_t errlen)
{
    size_t i;

    for (i = 0; i < sizeof(format_keys) / sizeof(format_keys[0]); i++)
        if (ms_config_get_bool(cfg, sec, format_keys[i].key,
                               submission ? format_keys[i].submission : format_keys[i].mx,
                               (int *)((char *)rules + format_keys[i].off), err, errlen) < 0)
            return MS_ECONFIG;
    return 0;
}

int fe_settings_load(struct fe_settings *set, const ms_config *cfg, char *err, size_t errlen)
{
    const char *v;
    static char host[256];
    char *copy, *items[FE_ACCEPTED_DOMAINS_MAX];
    size_t n, i;
    uint64_t secs;

    memset(set, 0, sizeof(*set));
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "frontend");
    host[sizeof(host) - 1] = '\0';
    set->node_id = ms_config_get(cfg, "node", "id", host);
    set->hostname = ms_config_get(cfg, "node", "hostname", "localhost");
    set->topic = ms_config_get(cfg, "kafka", "topic", "queue");
    /* In the banner, Received and a submission's Message-ID (fe_header.h
     * FE_HDR_ADDED_MAX keeps room for one this long). */
    if (strlen(set->hostname) > FE_HOSTNAME_MAX) {
        snprintf(err, errlen, "[node] hostname: at most %d octets", FE_HOSTNAME_MAX);
        return MS_ECONFIG;
    }
    set->events_topic = ms_config_get(cfg, "kafka", "events_topic", "");
    set->kafka_compression = ms_config_get(cfg, "kafka", "compression", "none");
    {
        /* The codecs librdkafka and the broker both know (KIP-110 adds zstd). */
        static const char *const codecs[] = {"none", "lz4", "zstd", "gzip", "snappy"};
        size_t c, ncodecs = sizeof(codecs) / sizeof(codecs[0]);

        for (c = 0; c < ncodecs && strcmp(set->kafka_compression, codecs[c]) != 0; c++)
            ;
        if (c == ncodecs) {
            snprintf(err, errlen, "[kafka] compression: none, lz4, zstd, gzip or snappy");
            return MS_ECONFIG;
        }
    }
    /* The Kafka record holds the message and its envelope. */
    if (get_u64(cfg, "kafka", "linger_ms", FE_LINGER_MS_DEF, 1, 1000, &set->kafka_linger_ms, err,
                errlen) < 0 ||
        get_u64(cfg, "kafka", "group_commit_window_us", FE_COMMIT_WINDOW_US_DEF, 1, 1000000,
                &set->group_commit_window_us, err, errlen) < 0 ||
        get_u64(cfg, "kafka", "batch_linger_ms", 0, 0, FE_BATCH_LINGER_MS_MAX,
                &set->batch_linger_ms, err, errlen) < 0)
        return MS_ECONFIG;
    if (ms_config_get_bool(cfg, "kafka", "group_commit", 1, &set->group_commit, err, errlen) < 0)
        return MS_ECONFIG;
    if (get_u64(cfg, "smtp", "max_message_size", 26214400, 1024,
                MS_KAFKA_RECORD_MAX - FE_ENVELOPE_HEADROOM, &set->max_message_size, err,
                errlen) < 0 ||
        get_u64(cfg, "smtp", "max_recipients", FE_MAX_RECIPIENTS_DEF, 1, 100000,
                &set->max_recipients, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_errors", FE_MAX_ERRORS_DEF, 1, 1000, &set->max_errors, err,
                errlen) < 0)
        return MS_ECONFIG;
    if (get_u64(cfg, "smtp", "command_timeout", FE_COMMAND_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->command_timeout_ms = secs * 1000;
    if (get_u64(cfg, "smtp", "greeting_timeout", FE_GREETING_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->greeting_timeout_ms = secs * 1000;
    if (get_u64(cfg, "smtp", "drain_timeout", FE_DRAIN_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->drain_timeout_ms = secs * 1000;

    copy = ms_strdup(ms_config_get(cfg, "smtp", "accepted_domains", "mailstream.test"));
    n = ms_config_split_list(copy, items, FE_ACCEPTED_DOMAINS_MAX);
    set->accepted_domains = ms_domainmap_new();
    for (i = 0; i < n; i++) {
        char key[MS_DOMAINMAP_KEY_MAX + 1];
        int kind = ms_domainmap_key(items[i], strlen(items[i]), key, sizeof(key));

        /* A name or ".parent"; "*" would take mail for every domain (an
         * open relay) and a next hop is no domain. */
        if (kind != MS_DOMAINMAP_EXACT && kind != MS_DOMAINMAP_PARENT) {
            snprintf(err, errlen, "[smtp] accepted_domains: bad domain \"%s\" (want a name "
                     "or .name for its subdomains)", items[i]);
            free(copy);
            return MS_ECONFIG;
        }
        ms_domainmap_put(set->accepted_domains, key, strlen(key), NULL, NULL);
    }
    free(copy);

    /* Postfix's relay_recipient_maps: per domain, a list of who exists. */
    copy = ms_strdup(ms_config_get(cfg, "smtp", "recipient_lists", ""));
    n = ms_config_split_list(copy, items, FE_ACCEPTED_DOMAINS_MAX);
    if (n > 0)
        set->recipient_lists = ms_domainmap_new();
    for (i = 0; i < n; i++) {
        char key[MS_DOMAINMAP_KEY_MAX + 1];
        if (ms_domainmap_key(items[i], strlen(items[i]), key, sizeof(key)) != MS_DOMAINMAP_EXACT) {
            snprintf(err, errlen, "[smtp] recipient_lists: bad domain \"%s\" (want a name)",
                     items[i]);
            free(copy);
            return MS_ECONFIG;
        }
        ms_domainmap_put(set->recipient_lists, key, strlen(key), NULL, NULL);
    }
    free(copy);

    if (get_networks(cfg, "trusted_networks", &set->trusted, &set->ntrusted, err, errlen) < 0 ||
        get_networks(cfg, "proxy_trusted_networks", &set->proxy_trusted, &set->nproxy_trusted,
                     err, errlen) < 0)
        return MS_ECONFIG;

    if (get_u64(cfg, "smtp", "max_connections", FE_MAX_CONNECTIONS_DEF, 1, 10000000,
                &set->max_connections, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_connections_per_ip", FE_MAX_CONN_PER_IP_DEF, 1, 10000000,
                &set->max_connections_per_ip, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_commands", FE_MAX_COMMANDS_DEF, 10, 100000000,
                &set->max_commands, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_pending_messages", FE_MAX_PENDING_DEF, 1, 10000000,
                &set->max_pending, err, errlen) < 0 ||
        get_u64(cfg, "ratelimit", "timeout_ms", FE_RL_TIMEOUT_DEF, 10, 600000,
                &set->rl_timeout_ms, err, errlen) < 0)
        return MS_ECONFIG;
    for (i = 0; i < FE_RATE_COUNT; i++) {
        v = ms_config_get(cfg, "ratelimit", rate_keys[i], rate_defaults[i]);
        if (fe_rate_parse(v, &set->rates[i]) < 0) {
            snprintf(err, errlen, "[ratelimit] %s: want N/PERIOD (e.g. 100/1h) or 0, not \"%s\"",
                     rate_keys[i], v);
            return MS_ECONFIG;
        }
    }
    set->rl_prefix = ms_config_get(cfg, "ratelimit", "key_prefix", MS_KEY_RATELIMIT);
    v = ms_config_get(cfg, "ratelimit", "redis_failure", "open");
    if (strcmp(v, "open") == 0)
        set->rl_fail_closed = 0;
    else if (strcmp(v, "closed") == 0)
        set->rl_fail_closed = 1;
    else {
        snprintf(err, errlen, "[ratelimit] redis_failure: want open or closed");
        return MS_ECONFIG;
    }
    if (ms_config_get_bool(cfg, "smtp", "refuse_suppressed", 0, &set->refuse_suppressed, err,
                           errlen) < 0)
        return MS_ECONFIG;
    /* worker/delivery.c suppress_key(): the same key, lower-cased. */
    set->suppress_prefix = MS_KEY_SUPPRESS;
    if (get_u64(cfg, "smtp", "max_header_size", FE_HDR_SECTION_MAX_DEF, 1024, 16 * 1024 * 1024,
                &secs, err, errlen) < 0)
        return MS_ECONFIG;
    set->hdr_limits.section_max = (size_t)secs;
    if (get_u64(cfg, "smtp", "max_header_fields", FE_HDR_FIELDS_MAX_DEF, 10, 1000000, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->hdr_limits.fields_max = (size_t)secs;
    if (get_u64(cfg, "smtp", "max_header_field_length", FE_HDR_FIELD_MAX_DEF, 998,
                16 * 1024 * 1024, &secs, err, errlen) < 0)
        return MS_ECONFIG;
    set->hdr_limits.field_max = (size_t)secs;
    if (get_format(cfg, "format.mx", 0, &set->format_mx, err, errlen) < 0 ||
        get_format(cfg, "format.submission", 1, &set->format_submission, err, errlen) < 0)
        return MS_ECONFIG;
    if (fe_milter_conf_load(&set->milter, cfg, err, errlen) < 0)
        return MS_ECONFIG;
    return fe_verify_conf_load(&set->verify, cfg, set->hostname, err, errlen);
}

void fe_settings_free(struct fe_settings *set)
{
    ms_domainmap_free(set->accepted_domains);
    ms_domainmap_free(set->recipient_lists);
    fe_verify_conf_free(&set->verify);
    free(set->trusted);
    free(set->proxy_trusted);
    memset(set, 0, sizeof(*set));
}

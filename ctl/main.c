/*
 * mailstream-ctl - the relay control tool: one binary, subcommands.
 *
 *   mailstream-ctl [-c FILE] [-b BROKERS] [--json] GROUP VERB [ARGS...]
 *   mailstream-ctl --version
 *
 * `mailstream-ctl --help` names every subcommand (the tables of ctl.h);
 * docs/operations.md describes each with an example, and the exit codes:
 * 0 done, 1 an action not applied to everything (the output says which),
 * 2 usage or bad input, 3 no cluster reachable, 4 unknown id or entry.
 *
 * Connection settings come from the worker's configuration file (-c; the
 * same Secret and ConfigMap serve both) and the environment over it, read
 * as every program reads them (ms_connect.h): [kafka] brokers, TLS and SASL
 * (-b overrides the brokers) and events_topic; [redis] host, port, AUTH and
 * Sentinel, read only by the commands that use Redis (ctl_redis), so that
 * `topics create` needs [kafka] alone.  Without -c, the environment alone
 * (MAILSTREAM_KAFKA_BROKERS, ...).  Only those sections are read: the file
 * is the worker's, and the worker checks the rest of it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ms_config.h"
#include "ms_connect.h"
#include "ms_error.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_qctl.h"
#include "ms_version.h"

#define CTL_TOPICS_MAX 64
#define CTL_CONFIGS_MAX 32
#define CTL_TIMEOUT_MS 30000

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-ctl [-c FILE] [-b BROKERS] topics create "
                    "NAME:PARTITIONS[:REPLICATION][@RETENTION]... [-c key=value]...\n"
                    "       mailstream-ctl --version\n");
    exit(2);
}

static int topics_create(const struct ms_kafka_conf *kc, int argc, char **argv);

static int run_topics_create(struct ctl *c, int argc, char **argv)
{
    return topics_create(&c->kconf, argc, argv);
}

static const struct ctl_cmd ctl_topics_cmds[] = {
    {"topics", "create", "NAME:PARTITIONS[:REPLICATION][@RETENTION]... [-c key=value]...",
     "create Kafka topics with the record size limit and each its retention (e.g. @3d)",
     run_topics_create},
    {NULL, NULL, NULL, NULL, NULL}};

/* Every subcommand, in --help order. */
static const struct ctl_cmd *const ctl_tables[] = {
    ctl_queue_cmds,  ctl_dest_cmds,   ctl_suppress_cmds, ctl_recipients_cmds,
    ctl_events_cmds, ctl_status_cmds, ctl_topics_cmds,   NULL};

static void help(FILE *f)
{
    const struct ctl_cmd *t;
    size_t i;

    fprintf(f, "usage: mailstream-ctl [-c FILE] [-b BROKERS] [--json] COMMAND [ARGS...]\n"
               "       mailstream-ctl --version\n\n"
               "commands:\n");
    for (i = 0; ctl_tables[i]; i++)
        for (t = ctl_tables[i]; t->group; t++) {
            char name[64];
            snprintf(name, sizeof(name), "%s%s%s", t->group, t->verb[0] ? " " : "", t->verb);
            fprintf(f, "  %-18s %s\n  %-18s   %s\n", name, t->args, "", t->help);
        }
    fprintf(f, "\noptions:\n"
               "  -c FILE     the worker's configuration file ([redis], [kafka])\n"
               "  -b BROKERS  Kafka bootstrap servers (over [kafka] brokers)\n"
               "  --json      listings and results as JSON\n"
               "  --version   the version, then exit\n\n"
               "exit codes: 0 done, 1 not applied to everything (the output says which),\n"
               "  2 usage or bad input, 3 no cluster reachable, 4 unknown id or entry\n");
}

static int topics_create(const struct ms_kafka_conf *kc, int argc, char **argv)
{
    struct ms_topic_spec topics[CTL_TOPICS_MAX];
    const char *configs[CTL_CONFIGS_MAX];
    size_t nt = 0, nc = 0;
    char err[512], *name, *p, *end;
    int i, r;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0) {
            if (++i >= argc || nc == CTL_CONFIGS_MAX)
                usage();
            configs[nc++] = argv[i];
            continue;
        }
        if (nt == CTL_TOPICS_MAX)
            usage();
        name = ms_strdup(argv[i]);
        topics[nt].retention_ms = 0;
        /* "@RETENTION": '@' is not in Kafka's topic name alphabet. */
        if ((p = strchr(name, '@')) != NULL) {
            int64_t secs;
            *p++ = '\0';
            if (ms_qctl_parse_duration(p, &secs) < 0 || secs == 0) {
                fprintf(stderr, "mailstream-ctl: topics create: bad retention \"%s\"\n", p);
                exit(2);
            }
            topics[nt].retention_ms = secs * 1000;
        }
        if ((p = strchr(name, ':')) == NULL)
            usage();
        *p++ = '\0';
        topics[nt].name = name;
        topics[nt].partitions = (int)strtol(p, &end, 10);
        topics[nt].replication = 0;
        if (*end == ':')
            topics[nt].replication = (int)strtol(end + 1, &end, 10);
        if (*end != '\0' || topics[nt].partitions <= 0 || *name == '\0')
            usage();
        nt++;
    }
    if (nt == 0)
        usage();
    r = ms_kafka_create_topics(kc, topics, nt, configs, nc, CTL_TIMEOUT_MS, err, sizeof(err));
    if (r != 0) {
        fprintf(stderr, "mailstream-ctl: creating topics failed: %s (%s)\n", err,
                ms_strerror(r));
        return 1;
    }
    for (i = 0; i < (int)nt; i++)
        free((char *)topics[i].name);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfile = NULL, *brokers = NULL;
    const struct ctl_cmd *t;
    struct ctl c;
    ms_config *cfg;
    char err[512];
    int i = 1, k, rc;

    ms_version_option(argc, argv, "mailstream-ctl");
    ms_log_init("ctl", MS_LOG_WARN);
    memset(&c, 0, sizeof(c));
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help(stdout);
            return CTL_EXIT_OK;
        } else if (strcmp(argv[i], "--json") == 0) {
            c.json = 1;
        } else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            cfile = argv[++i];
        } else if (strcmp(argv[i], "-b") == 0 && i + 1 < argc) {
            brokers = argv[++i];
        } else {
            help(stderr);
            return CTL_EXIT_USAGE;
        }
    }
    if ((cfg = ms_config_load(cfile, err, sizeof(err))) == NULL)
        return ctl_fail(CTL_EXIT_USAGE, "%s", err);
    c.cfg = cfg;
    if (ms_connect_kafka_conf(cfg, &c.kconf, &c.secrets, err, sizeof(err)) < 0) {
        ms_conn_secrets_clear(&c.secrets);
        ms_config_free(cfg);
        return ctl_fail(CTL_EXIT_USAGE, "%s", err);
    }
    c.kconf.client_id = "mailstream-ctl";
    if (brokers)
        c.kconf.brokers = brokers;
    c.events_topic = ms_config_get(cfg, "kafka", "events_topic", "events");
    if (i >= argc) {
        help(stderr);
        ms_conn_secrets_clear(&c.secrets);
        ms_config_free(cfg);
        return CTL_EXIT_USAGE;
    }
    for (k = 0; ctl_tables[k]; k++)
        for (t = ctl_tables[k]; t->group; t++)
            if (strcmp(argv[i], t->group) == 0 &&
                (t->verb[0] == '\0' || (i + 1 < argc && strcmp(argv[i + 1], t->verb) == 0))) {
                /* --json may also follow the subcommand. */
                int n = 0, j;
                char **rest = ms_calloc((size_t)argc, sizeof(*rest));
                for (j = i + (t->verb[0] ? 2 : 1); j < argc; j++) {
                    if (strcmp(argv[j], "--json") == 0)
                        c.json = 1;
                    else
                        rest[n++] = argv[j];
                }
                rc = t->run(&c, n, rest);
                free(rest);
                ms_redis_sync_free(c.redis);
                ms_conn_secrets_clear(&c.secrets);
                ms_config_free(cfg);
                return rc;
            }
    ctl_fail(CTL_EXIT_USAGE, "unknown command \"%s%s%s\" (mailstream-ctl --help)", argv[i],
             i + 1 < argc ? " " : "", i + 1 < argc ? argv[i + 1] : "");
    ms_conn_secrets_clear(&c.secrets);
    ms_config_free(cfg);
    return CTL_EXIT_USAGE;
}

/*
 * mailstream-ctl - the relay control tool.
 *
 *   mailstream-ctl [-c CONFIG] [-b BROKERS] topics create
 *                  NAME:PARTITIONS[:REPLICATION]... [-c key=value]...
 *   mailstream-ctl --version
 *
 * Creates topics with the record size limit the design needs (ms_kafka.h);
 * existing topics are left as they are.  Exit 0 on success, 1 on failure, 2
 * on usage errors.
 *
 * How to reach Kafka: the [kafka] section of CONFIG (the worker's file, so
 * one Secret and one ConfigMap serve both) and the MAILSTREAM_KAFKA_*
 * environment variables over it, as the programs read them (ms_connect.h:
 * brokers, TLS, SASL); -b overrides the brokers.  Without -c, the
 * environment alone (MAILSTREAM_KAFKA_BROKERS, ...).  Only [kafka] is read:
 * the other sections and keys of the file are the worker's, which checks
 * them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_config.h"
#include "ms_connect.h"
#include "ms_error.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_version.h"

#define CTL_TOPICS_MAX 64
#define CTL_CONFIGS_MAX 32
#define CTL_TIMEOUT_MS 30000

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-ctl [-c CONFIG] [-b BROKERS] topics create "
                    "NAME:PARTITIONS[:REPLICATION]... [-c key=value]...\n"
                    "       mailstream-ctl --version\n");
    exit(2);
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
    struct ms_kafka_conf kc;
    struct ms_conn_secrets secrets = {0};
    const char *config_path = NULL, *brokers = NULL;
    ms_config *cfg;
    char err[512];
    int i = 1, r;

    ms_version_option(argc, argv, "mailstream-ctl");
    ms_log_init("ctl", MS_LOG_WARN);
    for (;;) {
        if (i + 1 < argc && strcmp(argv[i], "-c") == 0)
            config_path = argv[i + 1];
        else if (i + 1 < argc && strcmp(argv[i], "-b") == 0)
            brokers = argv[i + 1];
        else
            break;
        i += 2;
    }
    if (!(i + 1 < argc && strcmp(argv[i], "topics") == 0 && strcmp(argv[i + 1], "create") == 0))
        usage();
    if ((cfg = ms_config_load(config_path, err, sizeof(err))) == NULL) {
        fprintf(stderr, "mailstream-ctl: %s\n", err);
        return 2;
    }
    memset(&kc, 0, sizeof(kc));
    if (ms_connect_kafka_conf(cfg, &kc, &secrets, err, sizeof(err)) < 0) {
        fprintf(stderr, "mailstream-ctl: %s\n", err);
        return 2;
    }
    kc.client_id = "mailstream-ctl";
    if (brokers)
        kc.brokers = brokers;
    r = topics_create(&kc, argc - i - 2, argv + i + 2);
    ms_conn_secrets_clear(&secrets);
    ms_config_free(cfg);
    return r;
}

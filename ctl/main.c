/*
 * mailstream-ctl - the relay control tool.
 *
 *   mailstream-ctl [-b BROKERS] topics create NAME:PARTITIONS[:REPLICATION]... [-c key=value]...
 *   mailstream-ctl --version
 *
 * Creates topics with the record size limit the design needs (ms_kafka.h);
 * existing topics are left as they are.  Exit 0 on success, 1 on failure, 2
 * on usage errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    fprintf(stderr, "usage: mailstream-ctl [-b BROKERS] topics create "
                    "NAME:PARTITIONS[:REPLICATION]... [-c key=value]...\n"
                    "       mailstream-ctl --version\n");
    exit(2);
}

static int topics_create(const char *brokers, int argc, char **argv)
{
    struct ms_topic_spec topics[CTL_TOPICS_MAX];
    const char *configs[CTL_CONFIGS_MAX];
    struct ms_kafka_conf kc = {.brokers = brokers, .client_id = "mailstream-ctl"};
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
    r = ms_kafka_create_topics(&kc, topics, nt, configs, nc, CTL_TIMEOUT_MS, err, sizeof(err));
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
    const char *brokers = getenv("MAILSTREAM_KAFKA_BROKERS");
    int i = 1;

    ms_version_option(argc, argv, "mailstream-ctl");
    ms_log_init("ctl", MS_LOG_WARN);
    if (brokers == NULL)
        brokers = "127.0.0.1:9092";
    if (i + 1 < argc && strcmp(argv[i], "-b") == 0) {
        brokers = argv[i + 1];
        i += 2;
    }
    if (i + 1 < argc && strcmp(argv[i], "topics") == 0 && strcmp(argv[i + 1], "create") == 0)
        return topics_create(brokers, argc - i - 2, argv + i + 2);
    usage();
    return 2;
}

/*
 * ms_connect.c - the [kafka] and [redis] connection settings (ms_connect.h).
 */
#include "ms_connect.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

char *ms_secret_read_file(const char *path, size_t max, char *err, size_t errlen)
{
    char *buf = ms_malloc(max + 2);
    size_t n;
    FILE *f;

    if ((f = fopen(path, "r")) == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        free(buf);
        return NULL;
    }
    /* One octet more than allowed (plus a line end) tells a file that is
     * too long from one that fits exactly. */
    n = fread(buf, 1, max + 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (n == 0 || n > max || memchr(buf, '\0', n) != NULL) {
        snprintf(err, errlen, "%s: %s", path,
                 n == 0 ? "empty" : n > max ? "longer than allowed" : "holds a NUL octet");
        memset(buf, 0, max + 2);
        free(buf);
        return NULL;
    }
    return buf;
}

static void wipe(char **p)
{
    if (*p) {
        memset(*p, 0, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

/* A password from `key` or from the file named by `key`_file, both looked
 * up; NULL in *out when neither is set. */
static int read_password(const ms_config *cfg, const char *section, const char *key,
                         const char *file_key, char **out, char *err, size_t errlen)
{
    const char *value = ms_config_get(cfg, section, key, "");
    const char *path = ms_config_get(cfg, section, file_key, "");
    char why[512];

    *out = NULL;
    if (*value && *path) {
        snprintf(err, errlen, "[%s] %s and %s are both set: keep one", section, key, file_key);
        return MS_ECONFIG;
    }
    if (*path) {
        if ((*out = ms_secret_read_file(path, MS_SECRET_MAX, why, sizeof(why))) == NULL) {
            snprintf(err, errlen, "[%s] %s: %s", section, file_key, why);
            return MS_ECONFIG;
        }
    } else if (*value) {
        if (strlen(value) > MS_SECRET_MAX) {
            snprintf(err, errlen, "[%s] %s: longer than %d octets", section, key, MS_SECRET_MAX);
            return MS_ECONFIG;
        }
        *out = ms_strdup(value);
    }
    return 0;
}

/* `value` as one of the NULL-terminated `names` (any case): its index, or
 * -1. */
static int pick(const char *value, const char *const *names)
{
    int i;

    for (i = 0; names[i]; i++)
        if (strcasecmp(value, names[i]) == 0)
            return i;
    return -1;
}

enum { PROTO_PLAINTEXT, PROTO_SSL, PROTO_SASL_PLAINTEXT, PROTO_SASL_SSL };
static const char *const protocols[] = {"plaintext", "ssl", "sasl_plaintext", "sasl_ssl", NULL};
static const char *const mechanisms[] = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", NULL};

int ms_connect_kafka_conf(const ms_config *cfg, struct ms_kafka_conf *kc,
                          struct ms_conn_secrets *s, char *err, size_t errlen)
{
    const char *proto = ms_config_get(cfg, "kafka", "security_protocol", "plaintext");
    const char *mech = ms_config_get(cfg, "kafka", "sasl_mechanism", "SCRAM-SHA-512");
    const char *user = ms_config_get(cfg, "kafka", "sasl_username", "");
    const char *ca = ms_config_get(cfg, "kafka", "ssl_ca_file", "");
    const char *cert = ms_config_get(cfg, "kafka", "ssl_cert_file", "");
    const char *key = ms_config_get(cfg, "kafka", "ssl_key_file", "");
    const char *key_pw_file = ms_config_get(cfg, "kafka", "ssl_key_password_file", "");
    char *pw = NULL, why[512];
    int p, m, sasl, tls;

    kc->brokers = ms_config_get(cfg, "kafka", "brokers", "127.0.0.1:9092");
    if (read_password(cfg, "kafka", "sasl_password", "sasl_password_file", &pw, err, errlen) < 0)
        return MS_ECONFIG;
    if ((p = pick(proto, protocols)) < 0) {
        snprintf(err, errlen, "[kafka] security_protocol: \"%s\": want plaintext, ssl, "
                 "sasl_plaintext or sasl_ssl", proto);
        goto fail;
    }
    if ((m = pick(mech, mechanisms)) < 0) {
        snprintf(err, errlen, "[kafka] sasl_mechanism: \"%s\": want PLAIN, SCRAM-SHA-256 or "
                 "SCRAM-SHA-512", mech);
        goto fail;
    }
    sasl = p == PROTO_SASL_PLAINTEXT || p == PROTO_SASL_SSL;
    tls = p == PROTO_SSL || p == PROTO_SASL_SSL;
    /* Settings the protocol would ignore are a misunderstanding: say so
     * rather than connect in a way the operator did not mean. */
    if (!sasl && (*user || pw)) {
        snprintf(err, errlen, "[kafka] sasl_username and sasl_password need security_protocol "
                 "sasl_plaintext or sasl_ssl (it is %s)", protocols[p]);
        goto fail;
    }
    if (sasl && (!*user || !pw)) {
        snprintf(err, errlen, "[kafka] security_protocol %s needs sasl_username and "
                 "sasl_password (or sasl_password_file)", protocols[p]);
        goto fail;
    }
    if (!tls && (*ca || *cert || *key || *key_pw_file)) {
        snprintf(err, errlen, "[kafka] ssl_* settings need security_protocol ssl or sasl_ssl "
                 "(it is %s)", protocols[p]);
        goto fail;
    }
    if (!*cert != !*key) {
        snprintf(err, errlen, "[kafka] ssl_cert_file and ssl_key_file go together");
        goto fail;
    }
    if (*key_pw_file) {
        if (!*key) {
            snprintf(err, errlen, "[kafka] ssl_key_password_file without ssl_key_file");
            goto fail;
        }
        s->kafka_ssl_key_password = ms_secret_read_file(key_pw_file, MS_SECRET_MAX, why,
                                                        sizeof(why));
        if (s->kafka_ssl_key_password == NULL) {
            snprintf(err, errlen, "[kafka] ssl_key_password_file: %s", why);
            goto fail;
        }
    }
    if (p == PROTO_SASL_PLAINTEXT && m == 0)
        ms_warn("event=kafka_insecure_config protocol=sasl_plaintext mechanism=PLAIN "
                "note=\"the password crosses the network in clear: use sasl_ssl or SCRAM\"");
    kc->security_protocol = protocols[p];
    kc->sasl_mechanism = sasl ? mechanisms[m] : NULL;
    kc->sasl_username = sasl ? user : NULL;
    kc->sasl_password = pw;
    kc->ssl_ca_file = *ca ? ca : NULL;
    kc->ssl_cert_file = *cert ? cert : NULL;
    kc->ssl_key_file = *key ? key : NULL;
    kc->ssl_key_password = s->kafka_ssl_key_password;
    s->kafka_sasl_password = pw;
    return 0;
fail:
    wipe(&pw);
    return MS_ECONFIG;
}

int ms_connect_redis_conf(const ms_config *cfg, struct ms_redis_conf *rc,
                          struct ms_conn_secrets *s, char *err, size_t errlen)
{
    const char *user = ms_config_get(cfg, "redis", "username", "");
    int64_t port, linger;
    char *pw;

    rc->host = ms_config_get(cfg, "redis", "host", "127.0.0.1");
    rc->sentinels = ms_config_get(cfg, "redis", "sentinels", "");
    rc->master_name = ms_config_get(cfg, "redis", "master_name", MS_REDIS_MASTER_NAME);
    if (ms_config_get_int(cfg, "redis", "port", 6379, 1, 65535, &port) < 0) {
        snprintf(err, errlen, "[redis] port: want 1 to 65535");
        return MS_ECONFIG;
    }
    rc->port = (int)port;
    if (ms_config_get_int(cfg, "redis", "linger_ms", MS_REDIS_LINGER_DEFAULT_MS, 0,
                          MS_REDIS_LINGER_MAX_MS, &linger) < 0) {
        snprintf(err, errlen, "[redis] linger_ms: want 0 to %d", MS_REDIS_LINGER_MAX_MS);
        return MS_ECONFIG;
    }
    rc->linger_ms = (int)linger;
    if (read_password(cfg, "redis", "password", "password_file", &pw, err, errlen) < 0)
        return MS_ECONFIG;
    if (*user && pw == NULL) {
        snprintf(err, errlen, "[redis] username needs password (or password_file)");
        return MS_ECONFIG;
    }
    rc->username = *user ? user : NULL;
    rc->password = pw;
    s->redis_password = pw;
    return ms_redis_conf_check(rc, err, errlen);
}

void ms_conn_secrets_clear(struct ms_conn_secrets *s)
{
    wipe(&s->kafka_sasl_password);
    wipe(&s->kafka_ssl_key_password);
    wipe(&s->redis_password);
}

/*
 * ms_connect.h - how every program connects to Kafka and Redis: the
 * addresses and the security settings of `[kafka]` and `[redis]`, read the
 * same way by the frontend, the worker and mailstream-ctl (docs/config.md,
 * docs/security.md).
 *
 * Kafka: security_protocol (plaintext, ssl, sasl_plaintext, sasl_ssl), the
 * SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with a user and a
 * password, a CA file, and a client certificate and key for mutual TLS.
 * Redis: AUTH with a password, or an ACL user and a password.
 *
 * Secrets.  A password comes from `*_password_file` (the file's content,
 * trailing line ends stripped: a Kubernetes Secret mounted as a file) or
 * from `*_password`, meant to be set through the environment
 * (MAILSTREAM_KAFKA_SASL_PASSWORD, MAILSTREAM_REDIS_PASSWORD); both at once
 * is refused.  Secrets are copied into a struct ms_conn_secrets the caller
 * owns and wipes with ms_conn_secrets_clear() once the clients are made
 * (librdkafka copies its configuration; the Redis client keeps its own copy
 * for reconnecting).  No message of this module, or of the clients, ever
 * holds a secret: errors name the key and the file, never the value.
 *
 * Every key of both sections is looked up whether used or not, so the
 * start-up check (ms_config_check_unknown) knows them all.
 *
 * Threads: the main thread at start-up, like ms_config.  Errors: MS_ECONFIG
 * with "[section] key: what is wrong" in err.
 */
#ifndef MS_CONNECT_H
#define MS_CONNECT_H

#include <stddef.h>

#include "ms_config.h"
#include "ms_kafka.h"
#include "ms_redis.h"

/* The longest secret taken from a file or a variable, in octets (SCRAM and
 * Redis passwords are far shorter; a longer file is a wrong file). */
#define MS_SECRET_MAX 1024

struct ms_conn_secrets {
    char *kafka_sasl_password;
    char *kafka_ssl_key_password;
    char *redis_password;
};

/* [kafka] brokers and the security keys into kc (other fields untouched).
 * Strings point into cfg, secrets into s. */
int ms_connect_kafka_conf(const ms_config *cfg, struct ms_kafka_conf *kc,
                          struct ms_conn_secrets *s, char *err, size_t errlen);
/* [redis] host, port, username, the password, sentinels and master_name
 * into rc, checked with ms_redis_conf_check.  The password is in s even when
 * the check fails (clear s either way). */
int ms_connect_redis_conf(const ms_config *cfg, struct ms_redis_conf *rc,
                          struct ms_conn_secrets *s, char *err, size_t errlen);
/* Overwrite and free the secrets. */
void ms_conn_secrets_clear(struct ms_conn_secrets *s);

/* A secret file's content with trailing CR and LF removed, malloc'd, or
 * NULL with "PATH: why" in err (unreadable, empty, longer than max octets,
 * or holding a NUL).  Used for every password file. */
char *ms_secret_read_file(const char *path, size_t max, char *err, size_t errlen);

#endif

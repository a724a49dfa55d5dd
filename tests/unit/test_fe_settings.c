/*
 * test_fe_settings.c - the frontend's settings (frontend/fe_settings.h): the
 * defaults docs/config.md promises, values read from a file, every bad value
 * refused with its key named, and the names of the limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_error.h"
#include "ms_log.h"
#include "unit_config.h"
#include "../../frontend/fe_settings.h"

/* Settings that must load from `text`; their config comes back in *cfg. */
static void load(const char *text, struct fe_settings *set, ms_config **cfg)
{
    char err[256] = "";

    *cfg = unit_config(text);
    if (fe_settings_load(set, *cfg, err, sizeof(err)) != 0)
        fail_msg("%s: %s", text, err);
}

static void test_defaults(void **state)
{
    struct fe_settings set;
    ms_config *cfg;

    (void)state;
    load("", &set, &cfg);
    assert_string_equal(set.hostname, "localhost");
    assert_string_equal(set.topic, "queue");
    assert_non_null(set.node_id);
    assert_true(set.node_id[0] != '\0');
    assert_int_equal(set.kafka_linger_ms, FE_LINGER_MS_DEF);
    assert_int_equal(set.group_commit, 1);
    assert_int_equal(set.group_commit_window_us, 600);
    assert_int_equal(set.max_message_size, 26214400);
    assert_int_equal(set.max_recipients, FE_MAX_RECIPIENTS_DEF);
    assert_int_equal(set.max_errors, FE_MAX_ERRORS_DEF);
    assert_int_equal(set.command_timeout_ms, FE_COMMAND_TIMEOUT_DEF * 1000);
    assert_int_equal(set.greeting_timeout_ms, FE_GREETING_TIMEOUT_DEF * 1000);
    assert_int_equal(set.drain_timeout_ms, FE_DRAIN_TIMEOUT_DEF * 1000);
    assert_int_equal(ms_domainmap_size(set.accepted_domains), 1);
    assert_string_equal(ms_domainmap_at(set.accepted_domains, 0)->key, "mailstream.test");
    assert_int_equal(set.ntrusted, 0);
    assert_int_equal(set.nproxy_trusted, 0);
    assert_int_equal(set.max_connections, FE_MAX_CONNECTIONS_DEF);
    assert_int_equal(set.max_connections_per_ip, FE_MAX_CONN_PER_IP_DEF);
    assert_int_equal(set.max_commands, FE_MAX_COMMANDS_DEF);
    assert_int_equal(set.max_pending, FE_MAX_PENDING_DEF);
    assert_int_equal(set.rl_timeout_ms, FE_RL_TIMEOUT_DEF);
    /* Only the AUTH failure limits are on by default (30/10m, 10/10m). */
    assert_int_equal(set.rates[FE_RATE_CONN_IP].n, 0);
    assert_int_equal(set.rates[FE_RATE_MSG_USER].n, 0);
    assert_int_equal(set.rates[FE_RATE_MSG_DOMAIN].n, 0);
    assert_int_equal(set.rates[FE_RATE_RCPT_CLIENT].n, 0);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_IP].n, 30);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_IP].secs, 600);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_USER].n, 10);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_USER].secs, 600);
    assert_string_equal(set.rl_prefix, "ms:rl:");
    assert_int_equal(set.rl_fail_closed, 0);
    assert_int_equal(set.refuse_suppressed, 0);
    /* The worker's suppression keys (worker/delivery.c). */
    assert_string_equal(set.suppress_prefix, "ms:suppress:");
    assert_true(fe_settings_need_redis(&set));
    fe_settings_free(&set);
    ms_config_free(cfg);
}

static void test_values(void **state)
{
    static const char *const text =
        "[node]\nid = fe9\nhostname = mx.example\n"
        "[kafka]\ntopic = q2\nlinger_ms = 5\ngroup_commit = no\n"
        "group_commit_window_us = 250\n"
        "[smtp]\naccepted_domains = a.example, b.example ,c.example\n"
        "trusted_networks = 10.0.0.0/8, 2001:db8::/32\n"
        "proxy_trusted_networks = 192.0.2.1\n"
        "max_message_size = 1m\nmax_recipients = 7\nmax_errors = 3\n"
        "command_timeout = 20\ngreeting_timeout = 5\ndrain_timeout = 9\n"
        "max_connections = 100\nmax_connections_per_ip = 4\n"
        "max_commands = 50\nmax_pending_messages = 12\n"
        "refuse_suppressed = yes\n"
        "[ratelimit]\nconnections_per_ip = 100/1h\n"
        "auth_failures_per_ip = 0\nauth_failures_per_user = off\n"
        "key_prefix = rl:\nredis_failure = closed\ntimeout_ms = 150\n";
    struct fe_settings set;
    ms_config *cfg;

    (void)state;
    load(text, &set, &cfg);
    assert_string_equal(set.node_id, "fe9");
    assert_string_equal(set.hostname, "mx.example");
    assert_string_equal(set.topic, "q2");
    assert_int_equal(set.kafka_linger_ms, 5);
    assert_int_equal(set.group_commit, 0);
    assert_int_equal(set.group_commit_window_us, 250);
    assert_int_equal(ms_domainmap_size(set.accepted_domains), 3);
    assert_string_equal(ms_domainmap_at(set.accepted_domains, 1)->key, "b.example");
    assert_int_equal(set.ntrusted, 2);
    assert_int_equal(set.trusted[1].prefix, 32);
    assert_int_equal(set.nproxy_trusted, 1);
    assert_int_equal(set.proxy_trusted[0].prefix, 32);
    assert_int_equal(set.max_message_size, 1024 * 1024);
    assert_int_equal(set.max_recipients, 7);
    assert_int_equal(set.max_errors, 3);
    assert_int_equal(set.command_timeout_ms, 20000);
    assert_int_equal(set.greeting_timeout_ms, 5000);
    assert_int_equal(set.drain_timeout_ms, 9000);
    assert_int_equal(set.max_connections, 100);
    assert_int_equal(set.max_connections_per_ip, 4);
    assert_int_equal(set.max_commands, 50);
    assert_int_equal(set.max_pending, 12);
    assert_int_equal(set.refuse_suppressed, 1);
    assert_int_equal(set.rates[FE_RATE_CONN_IP].n, 100);
    assert_int_equal(set.rates[FE_RATE_CONN_IP].secs, 3600);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_IP].n, 0);
    assert_int_equal(set.rates[FE_RATE_AUTHFAIL_USER].n, 0);
    assert_string_equal(set.rl_prefix, "rl:");
    assert_int_equal(set.rl_fail_closed, 1);
    assert_int_equal(set.rl_timeout_ms, 150);
    assert_true(fe_settings_need_redis(&set));
    fe_settings_free(&set);
    ms_config_free(cfg);
}

/* No limit and no suppression check in Redis: no Redis needed. */
static void test_need_redis(void **state)
{
    struct fe_settings set;
    ms_config *cfg;

    (void)state;
    load("[ratelimit]\nauth_failures_per_ip = 0\nauth_failures_per_user = 0\n", &set, &cfg);
    assert_false(fe_settings_need_redis(&set));
    set.refuse_suppressed = 1;
    assert_true(fe_settings_need_redis(&set));
    set.refuse_suppressed = 0;
    set.rates[FE_RATE_MSG_DOMAIN].n = 1;
    assert_true(fe_settings_need_redis(&set));
    fe_settings_free(&set);
    ms_config_free(cfg);
}

/* Every bad value stops the load, and the reason names its key. */
static void test_errors(void **state)
{
    static const struct {
        const char *text;
        const char *key;
    } cases[] = {
        {"[kafka]\nlinger_ms = 0\n", "linger_ms"},
        {"[kafka]\ngroup_commit_window_us = 2000000\n", "group_commit_window_us"},
        {"[kafka]\ngroup_commit = ja\n", "group_commit"},
        {"[smtp]\nmax_message_size = 512\n", "max_message_size"},
        {"[smtp]\nmax_message_size = 32m\n", "max_message_size"}, /* over the record */
        {"[smtp]\nmax_recipients = 0\n", "max_recipients"},
        {"[smtp]\nmax_errors = many\n", "max_errors"},
        {"[smtp]\ncommand_timeout = 0\n", "command_timeout"},
        {"[smtp]\ngreeting_timeout = 3601\n", "greeting_timeout"},
        {"[smtp]\ndrain_timeout = -1\n", "drain_timeout"},
        {"[smtp]\ntrusted_networks = 10.0.0.0/8, 10.0.0.0/33\n", "trusted_networks"},
        {"[smtp]\nproxy_trusted_networks = lb.example\n", "proxy_trusted_networks"},
        {"[smtp]\naccepted_domains = a.example, *\n", "accepted_domains"},
        {"[smtp]\naccepted_domains = [192.0.2.1]:25\n", "accepted_domains"},
        {"[smtp]\naccepted_domains = a..example\n", "accepted_domains"},
        {"[smtp]\naccepted_domains = b.example, exa_mple.org, c d.example\n", "accepted_domains"},
        {"[smtp]\nmax_connections = 0\n", "max_connections"},
        {"[smtp]\nmax_connections_per_ip = 0\n", "max_connections_per_ip"},
        {"[smtp]\nmax_commands = 9\n", "max_commands"},
        {"[smtp]\nmax_pending_messages = 0\n", "max_pending_messages"},
        {"[smtp]\nrefuse_suppressed = ja\n", "refuse_suppressed"},
        {"[ratelimit]\ntimeout_ms = 5\n", "timeout_ms"},
        {"[ratelimit]\nmessages_per_user = 10 per hour\n", "messages_per_user"},
        {"[ratelimit]\nrecipients_per_client = 5/\n", "recipients_per_client"},
        {"[ratelimit]\nredis_failure = maybe\n", "redis_failure"},
    };
    struct fe_settings set;
    char err[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_config *cfg = unit_config(cases[i].text);

        err[0] = '\0';
        if (fe_settings_load(&set, cfg, err, sizeof(err)) != MS_ECONFIG)
            fail_msg("%s: loaded", cases[i].text);
        if (strstr(err, cases[i].key) == NULL)
            fail_msg("%s: reason \"%s\" does not name %s", cases[i].text, err, cases[i].key);
        fe_settings_free(&set);
        ms_config_free(cfg);
    }
}

static void test_limit_names(void **state)
{
    (void)state;
    assert_string_equal(fe_limit_name(FE_RATE_CONN_IP), "connections_per_ip");
    assert_string_equal(fe_limit_name(FE_RATE_AUTHFAIL_USER), "auth_failures_per_user");
    assert_string_equal(fe_limit_name(FE_LIMIT_CONNECTIONS), "max_connections");
    assert_string_equal(fe_limit_name(FE_LIMIT_CONN_PER_IP), "max_connections_per_ip");
    assert_string_equal(fe_limit_name(FE_LIMIT_COMMANDS), "max_commands");
    assert_string_equal(fe_limit_name(FE_LIMIT_BACKPRESSURE), "max_pending_messages");
    assert_string_equal(fe_limit_name(-1), "?");
    assert_string_equal(fe_limit_name(FE_LIMIT_COUNT), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),    cmocka_unit_test(test_values),
        cmocka_unit_test(test_need_redis),  cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limit_names),
    };

    ms_log_init("test", MS_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

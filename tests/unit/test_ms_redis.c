/*
 * test_ms_redis.c - lib/io/ms_redis.h: the [redis] sentinels list is
 * checked at start-up (ms_redis_conf_check), so a typo stops the process
 * instead of leaving it asking nobody.  Talking to Sentinels and following
 * a failover is tested against real Redis and Sentinel processes in
 * tests/integration/test_cluster_sentinel.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_error.h"
#include "ms_redis.h"

static void test_sentinels_check(void **state)
{
    static const struct {
        const char *list;
        int ok;
        const char *says; /* in err when refused */
    } cases[] = {
        {"", 1, NULL},
        {"127.0.0.1:26379", 1, NULL},
        {"127.0.0.1:26379, 127.0.0.1:26380 ,redis-s3.example:26381", 1, NULL},
        {"[::1]:26379", 1, NULL},
        {"s1:1,s2:65535", 1, NULL},
        {"127.0.0.1", 0, "want host:port"},
        {":26379", 0, "want host:port"},
        {"127.0.0.1:", 0, "want host:port"},
        {"127.0.0.1:0", 0, "1 to 65535"},
        {"127.0.0.1:65536", 0, "1 to 65535"},
        {"127.0.0.1:26x", 0, "1 to 65535"},
        {"127.0.0.1:-5", 0, "1 to 65535"},
        {"[]:26379", 0, "1 to 65535"},
        {"a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,n:14,o:15,p:16", 1, NULL},
        {"a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,n:14,o:15,p:16,q:17", 0,
         "more than 16"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ms_redis_conf c = {.host = "127.0.0.1", .port = 6379, .sentinels = cases[i].list};
        char err[256] = "";
        int rc = ms_redis_conf_check(&c, err, sizeof(err));

        if (cases[i].ok) {
            if (rc != 0)
                fail_msg("\"%s\" refused: %s", cases[i].list, err);
        } else {
            if (rc != MS_ECONFIG)
                fail_msg("\"%s\" accepted", cases[i].list);
            if (strstr(err, "[redis] sentinels") == NULL || strstr(err, cases[i].says) == NULL)
                fail_msg("\"%s\": err \"%s\" lacks \"%s\"", cases[i].list, err, cases[i].says);
        }
    }
}

static void test_master_name_length(void **state)
{
    char name[MS_REDIS_SENTINEL_HOST_MAX + 2], err[256];
    struct ms_redis_conf c = {.sentinels = "127.0.0.1:26379", .master_name = name};

    (void)state;
    memset(name, 'm', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(ms_redis_conf_check(&c, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "[redis] master_name"));
    name[sizeof(name) - 2] = '\0';
    assert_int_equal(ms_redis_conf_check(&c, err, sizeof(err)), 0);
    /* Without sentinels master_name is not used, so not checked. */
    c.sentinels = NULL;
    name[sizeof(name) - 2] = 'm';
    assert_int_equal(ms_redis_conf_check(&c, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sentinels_check),
        cmocka_unit_test(test_master_name_length),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

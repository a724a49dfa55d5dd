/*
 * ms_kstats.c - the only file that includes jansson (ms_kstats.h).
 */
#include "ms_kstats.h"

#include <jansson.h>
#include <stdlib.h>

/* A JSON integer member, or -1 when absent or not an integer (librdkafka
 * writes -1 for "none" itself). */
static int64_t member_int(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

/* Partition ids are object keys ("0", "-1"): decimal, in int32 range. */
static int parse_partition(const char *key, int32_t *out)
{
    char *end;
    long v;

    if (*key == '\0')
        return -1;
    v = strtol(key, &end, 10);
    if (*end != '\0' || v < INT32_MIN || v > INT32_MAX)
        return -1;
    *out = (int32_t)v;
    return 0;
}

long ms_kstats_lag(const char *json, size_t len, const char *topic, struct ms_kafka_lag *out,
                   size_t max)
{
    json_t *root, *parts, *p;
    json_error_t jerr;
    const char *key;
    int64_t hi, base;
    int32_t id;
    long n = 0;

    /* JSON_ALLOW_NUL is not given: an embedded NUL is an error, as it can
     * never come from librdkafka. */
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return -1;
    }
    parts = json_object_get(json_object_get(json_object_get(root, "topics"), topic),
                            "partitions");
    json_object_foreach(parts, key, p) {
        if (!json_is_object(p) || parse_partition(key, &id) < 0 || id < 0)
            continue;
        if (!json_is_true(json_object_get(p, "desired")))
            continue;
        if ((hi = member_int(p, "hi_offset")) < 0)
            continue;
        if ((base = member_int(p, "stored_offset")) < 0 &&
            (base = member_int(p, "committed_offset")) < 0 &&
            (base = member_int(p, "lo_offset")) < 0)
            base = 0;
        if ((size_t)n < max) {
            out[n].partition = id;
            out[n].lag = hi > base ? hi - base : 0;
        }
        n++;
    }
    json_decref(root);
    return n;
}

/*
 * ms_qctl.h - the records of the queue control, as the worker writes and
 * mailstream-ctl reads them (and the other way round), built and parsed
 * without I/O (docs/operations.md has the design; ms_keys.h the keys).
 *
 * The queue is Kafka, where a record cannot be changed or deleted, so an
 * operator's action is not applied to the record: it is written to Redis
 * beside it (MS_KEY_CONTROL + queue id) and the worker reads it before it
 * attempts the record.  This header holds the value formats:
 *
 *   control     "ACTION AT_US REASON"            (ms_qctl_format)
 *   queue info  tab-separated listing line       (ms_qinfo_format)
 *   suspension  "UNTIL_US SINCE_US REASON"       (ms_qctl_suspend_format)
 *
 * and the pure helpers of the CLI: durations ("15m") and listing filters.
 *
 * Pure, any thread.  Parsers take text from Redis, which anyone could have
 * written, and refuse what does not fit (MS_EINVAL) rather than guess.
 */
#ifndef MS_QCTL_H
#define MS_QCTL_H

#include <stddef.h>
#include <stdint.h>

/* An operator's reason, as stored (longer ones are refused by the CLI). */
#define MS_QCTL_REASON_MAX 200
/* A control record outlives any message it could be about ([retry]
 * max_age is at most this): mailstream-ctl sets it as the record's TTL. */
#define MS_QCTL_TTL_S (30 * 24 * 3600)
/* Longest duration the CLI takes ("--for", "--older-than"): ten years. */
#define MS_QCTL_DURATION_MAX_S (10LL * 366 * 24 * 3600)

enum ms_qctl_action {
    MS_QCTL_NONE,
    MS_QCTL_HOLD,   /* never attempted until released */
    MS_QCTL_RETRY,  /* due now: attempted on the next look, whatever its tier */
    MS_QCTL_BOUNCE, /* every pending recipient bounced (DSN by the backscatter rule) */
    MS_QCTL_DELETE, /* every pending recipient dropped, no DSN, an event each */
    MS_QCTL__N
};

struct ms_qctl {
    enum ms_qctl_action action;
    int64_t at_us; /* when the operator asked */
    char reason[MS_QCTL_REASON_MAX + 1];
};

const char *ms_qctl_action_name(enum ms_qctl_action a);
/* "hold", "retry", "bounce", "delete": the action, else MS_QCTL_NONE. */
enum ms_qctl_action ms_qctl_action_parse(const char *s);

/* "ACTION AT_US REASON" into buf; returns its length, or MS_ETOOBIG.  Tabs
 * and line ends in the reason become spaces. */
int ms_qctl_format(const struct ms_qctl *c, char *buf, size_t len);
/* Parse a control value (not NUL-terminated); 0 or MS_EINVAL. */
int ms_qctl_parse(const char *s, size_t len, struct ms_qctl *out);

/* Does a RETRY made at at_us still apply to a record whose last attempt
 * was at last_attempt_us (0: never attempted)?  Only if the operator asked
 * after that attempt: once the worker has made the attempt it asked for,
 * the same control record is spent, with no need to delete it (and no race
 * with an operator who meanwhile asked for something else). */
int ms_qctl_retry_applies(int64_t at_us, int64_t last_attempt_us);

/* Longest record field "topic/partition/offset" (a Kafka topic name is at
 * most 249 octets). */
#define MS_QINFO_RECORD_MAX 300

/* The listing line of one deferred or held message (MS_KEY_QUEUE_INFO).
 * Lists are comma-separated; the strings point into the parsed line. */
struct ms_qinfo {
    const char *state; /* "deferred" or "held" */
    int64_t received_us;
    int64_t next_attempt_us;
    unsigned attempts;
    int tier;
    uint64_t size;
    const char *sender; /* "" for the null sender */
    const char *rcpts;  /* the pending recipients */
    const char *dests;  /* their destinations (the worker's dest names) */
    const char *last_reply;
    /* "topic/partition/offset" of a Kafka record that holds the message
     * (the one the worker was attempting when it deferred it), for `queue
     * show --message`; "" when not known (a line of an older worker). */
    const char *record;
};
/* Malloc'd line; tabs and line ends inside fields become spaces. */
char *ms_qinfo_format(const struct ms_qinfo *q);
/* Parse `line` in place (it is cut at the tabs); 0 or MS_EINVAL.  A line
 * without the record field (ten fields) parses with record "". */
int ms_qinfo_parse(char *line, struct ms_qinfo *out);
/* Split a record field "topic/partition/offset"; 0 or MS_EINVAL (also for
 * ""). topic is copied into topic[topiclen]. */
int ms_qinfo_record_parse(const char *s, char *topic, size_t topiclen, int32_t *partition,
                          int64_t *offset);

/* `queue list` filters; NULL or 0 fields do not filter. */
struct ms_qinfo_filter {
    const char *dest;     /* one of the message's destinations (exact, any case) */
    const char *sender;   /* substring of the sender, any case */
    const char *rcpt;     /* substring of one pending recipient, any case */
    int64_t older_than_s; /* accepted at least this long before now */
};
int ms_qinfo_match(const struct ms_qinfo *q, const struct ms_qinfo_filter *f, int64_t now_us);

/* Is `name` one element of comma-separated `list` (any case)? */
int ms_qctl_list_has(const char *list, const char *name);

/* A destination's suspension (MS_KEY_SUSPEND): until (0: until resumed),
 * since, reason. */
struct ms_qctl_suspend {
    int64_t until_us;
    int64_t since_us;
    char reason[MS_QCTL_REASON_MAX + 1];
};
int ms_qctl_suspend_format(const struct ms_qctl_suspend *s, char *buf, size_t len);
int ms_qctl_suspend_parse(const char *s, size_t len, struct ms_qctl_suspend *out);
/* In force at now_us? */
int ms_qctl_suspend_active(const struct ms_qctl_suspend *s, int64_t now_us);

/* The string field `name` of a flat JSON record as our own writers make
 * it (ms_json.h: `"name":"value"`, no spaces), unescaped into out; \uXXXX
 * beyond ASCII becomes '?'.  1 found, 0 absent (or not a string),
 * MS_ETOOBIG when out is too small. */
int ms_qctl_json_field(const char *json, size_t len, const char *name, char *out, size_t outlen);

/* A duration: digits with an optional unit s, m, h, d or w (none:
 * seconds), e.g. "90", "15m", "2h", "3d"; at most MS_QCTL_DURATION_MAX_S.
 * Returns 0 with *out_s, or MS_EINVAL. */
int ms_qctl_parse_duration(const char *s, int64_t *out_s);

#endif

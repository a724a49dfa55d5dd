/*
 * ms_qctl.c - the queue control's records (ms_qctl.h).
 */
#include "ms_qctl.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const action_names[MS_QCTL__N] = {"none", "hold", "retry", "bounce", "delete"};

const char *ms_qctl_action_name(enum ms_qctl_action a)
{
    return a >= 0 && a < MS_QCTL__N ? action_names[a] : "none";
}

enum ms_qctl_action ms_qctl_action_parse(const char *s)
{
    int a;

    for (a = MS_QCTL_HOLD; a < MS_QCTL__N; a++)
        if (strcmp(s, action_names[a]) == 0)
            return (enum ms_qctl_action)a;
    return MS_QCTL_NONE;
}

/* Copy src into dst (size dlen) with tabs and line ends turned to spaces. */
static void copy_flat(char *dst, size_t dlen, const char *src, size_t slen)
{
    size_t i, n = slen < dlen - 1 ? slen : dlen - 1;

    for (i = 0; i < n; i++)
        dst[i] = src[i] == '\t' || src[i] == '\r' || src[i] == '\n' ? ' ' : src[i];
    dst[n] = '\0';
}

int ms_qctl_format(const struct ms_qctl *c, char *buf, size_t len)
{
    char reason[MS_QCTL_REASON_MAX + 1];
    int n;

    copy_flat(reason, sizeof(reason), c->reason, strlen(c->reason));
    n = snprintf(buf, len, "%s %lld %s", ms_qctl_action_name(c->action), (long long)c->at_us,
                 reason);
    return n < 0 || (size_t)n >= len ? MS_ETOOBIG : n;
}

/* "WORD INT REST" from a value that is not NUL-terminated. */
static int parse_word_int_rest(const char *s, size_t len, char *word, size_t wlen, int64_t *num,
                               const char **rest, size_t *restlen)
{
    size_t i = 0, w = 0;
    int64_t v = 0;
    int digits = 0;

    while (i < len && s[i] != ' ') {
        if (w + 1 >= wlen)
            return MS_EINVAL;
        word[w++] = s[i++];
    }
    word[w] = '\0';
    if (i++ >= len)
        return MS_EINVAL;
    for (; i < len && isdigit((unsigned char)s[i]); i++, digits++) {
        if (v > (INT64_MAX - 9) / 10)
            return MS_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (digits == 0 || (i < len && s[i] != ' '))
        return MS_EINVAL;
    *num = v;
    if (i < len)
        i++;
    *rest = s + i;
    *restlen = len - i;
    return 0;
}

int ms_qctl_parse(const char *s, size_t len, struct ms_qctl *out)
{
    char word[16];
    const char *rest;
    size_t restlen;

    memset(out, 0, sizeof(*out));
    if (parse_word_int_rest(s, len, word, sizeof(word), &out->at_us, &rest, &restlen) < 0)
        return MS_EINVAL;
    if ((out->action = ms_qctl_action_parse(word)) == MS_QCTL_NONE)
        return MS_EINVAL;
    copy_flat(out->reason, sizeof(out->reason), rest, restlen);
    return 0;
}

int ms_qctl_retry_applies(int64_t at_us, int64_t last_attempt_us)
{
    return at_us > last_attempt_us;
}

char *ms_qinfo_format(const struct ms_qinfo *q)
{
    const char *strs[6] = {q->state, q->sender, q->rcpts, q->dests, q->last_reply, q->record};
    char *flat[6], *line;
    size_t i;

    for (i = 0; i < 6; i++) {
        size_t n = strs[i] ? strlen(strs[i]) : 0;
        flat[i] = ms_malloc(n + 1);
        copy_flat(flat[i], n + 1, strs[i] ? strs[i] : "", n);
    }
    line = ms_asprintf("%s\t%lld\t%lld\t%u\t%d\t%llu\t%s\t%s\t%s\t%s\t%s", flat[0],
                       (long long)q->received_us, (long long)q->next_attempt_us, q->attempts,
                       q->tier, (unsigned long long)q->size, flat[1], flat[2], flat[3], flat[4],
                       flat[5]);
    for (i = 0; i < 6; i++)
        free(flat[i]);
    return line;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0)
        return MS_EINVAL;
    *out = v;
    return 0;
}

int ms_qinfo_parse(char *line, struct ms_qinfo *out)
{
    char *f[11], *p = line;
    int64_t v[4];
    size_t n = 0;

    memset(out, 0, sizeof(*out));
    while (n < 11) {
        f[n++] = p;
        if ((p = strchr(p, '\t')) == NULL)
            break;
        *p++ = '\0';
    }
    if (n < 10 || p != NULL)
        return MS_EINVAL;
    out->record = n == 11 ? f[10] : "";
    if (parse_i64(f[1], &v[0]) < 0 || parse_i64(f[2], &v[1]) < 0 || parse_i64(f[3], &v[2]) < 0 ||
        parse_i64(f[4], &v[3]) < 0 || v[2] < 0 || v[2] > UINT32_MAX)
        return MS_EINVAL;
    out->state = f[0];
    out->received_us = v[0];
    out->next_attempt_us = v[1];
    out->attempts = (unsigned)v[2];
    out->tier = (int)v[3];
    if (parse_i64(f[5], &v[0]) < 0 || v[0] < 0)
        return MS_EINVAL;
    out->size = (uint64_t)v[0];
    out->sender = f[6];
    out->rcpts = f[7];
    out->dests = f[8];
    out->last_reply = f[9];
    return 0;
}

int ms_qinfo_record_parse(const char *s, char *topic, size_t topiclen, int32_t *partition,
                          int64_t *offset)
{
    const char *o = strrchr(s, '/'), *pp;
    char *end;
    long long part, off;

    if (o == NULL || o == s)
        return MS_EINVAL;
    for (pp = o - 1; pp > s && *pp != '/'; pp--)
        ;
    if (pp == s || (size_t)(pp - s) >= topiclen)
        return MS_EINVAL;
    errno = 0;
    part = strtoll(pp + 1, &end, 10);
    if (end != o || pp[1] == '/' || part < 0 || part > INT32_MAX)
        return MS_EINVAL;
    off = strtoll(o + 1, &end, 10);
    if (o[1] == '\0' || *end != '\0' || off < 0 || errno != 0)
        return MS_EINVAL;
    memcpy(topic, s, (size_t)(pp - s));
    topic[pp - s] = '\0';
    *partition = (int32_t)part;
    *offset = off;
    return 0;
}

int ms_qctl_list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    const char *p = list, *e;

    for (;;) {
        e = strchr(p, ',');
        if ((size_t)(e ? e - p : (ptrdiff_t)strlen(p)) == n && strncasecmp(p, name, n) == 0)
            return 1;
        if (e == NULL)
            return 0;
        p = e + 1;
    }
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return n == 0;
}

int ms_qinfo_match(const struct ms_qinfo *q, const struct ms_qinfo_filter *f, int64_t now_us)
{
    if (f->dest && !ms_qctl_list_has(q->dests, f->dest))
        return 0;
    if (f->sender && !contains_nocase(q->sender, f->sender))
        return 0;
    if (f->rcpt && !contains_nocase(q->rcpts, f->rcpt))
        return 0;
    if (f->older_than_s > 0 && now_us - q->received_us < f->older_than_s * 1000000)
        return 0;
    return 1;
}

int ms_qctl_suspend_format(const struct ms_qctl_suspend *s, char *buf, size_t len)
{
    char reason[MS_QCTL_REASON_MAX + 1];
    int n;

    copy_flat(reason, sizeof(reason), s->reason, strlen(s->reason));
    n = snprintf(buf, len, "%lld %lld %s", (long long)s->until_us, (long long)s->since_us, reason);
    return n < 0 || (size_t)n >= len ? MS_ETOOBIG : n;
}

int ms_qctl_suspend_parse(const char *s, size_t len, struct ms_qctl_suspend *out)
{
    char word[24];
    const char *rest;
    size_t restlen;
    int64_t until;

    memset(out, 0, sizeof(*out));
    /* "UNTIL SINCE REASON": the first number is read as a word. */
    if (parse_word_int_rest(s, len, word, sizeof(word), &out->since_us, &rest, &restlen) < 0 ||
        parse_i64(word, &until) < 0 || until < 0)
        return MS_EINVAL;
    out->until_us = until;
    copy_flat(out->reason, sizeof(out->reason), rest, restlen);
    return 0;
}

int ms_qctl_suspend_active(const struct ms_qctl_suspend *s, int64_t now_us)
{
    return s->until_us == 0 || now_us < s->until_us;
}

int ms_qctl_parse_duration(const char *s, int64_t *out_s)
{
    int64_t v = 0, mult = 1;
    const char *p = s;

    if (!isdigit((unsigned char)*p))
        return MS_EINVAL;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > MS_QCTL_DURATION_MAX_S)
            return MS_EINVAL;
        v = v * 10 + (*p - '0');
    }
    switch (*p) {
    case '\0': break;
    case 's': mult = 1; break;
    case 'm': mult = 60; break;
    case 'h': mult = 3600; break;
    case 'd': mult = 86400; break;
    case 'w': mult = 7 * 86400; break;
    default: return MS_EINVAL;
    }
    if (*p != '\0' && p[1] != '\0')
        return MS_EINVAL;
    if (v > MS_QCTL_DURATION_MAX_S / mult)
        return MS_EINVAL;
    *out_s = v * mult;
    return 0;
}

int ms_qctl_json_field(const char *json, size_t len, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name), i, o = 0;

    if (outlen == 0)
        return MS_ETOOBIG;
    for (i = 0; i + nlen + 4 <= len; i++) {
        /* "name":" preceded by { or , (a key, not a value's text). */
        if ((json[i] != '{' && json[i] != ',') || json[i + 1] != '"' ||
            memcmp(json + i + 2, name, nlen) != 0 || i + nlen + 5 > len ||
            memcmp(json + i + 2 + nlen, "\":\"", 3) != 0)
            continue;
        for (i += nlen + 5; i < len && json[i] != '"'; i++) {
            char ch = json[i];
            if (ch == '\\' && i + 1 < len) {
                ch = json[++i];
                switch (ch) {
                case 'n': ch = '\n'; break;
                case 't': ch = '\t'; break;
                case 'r': ch = '\r'; break;
                case 'b': ch = '\b'; break;
                case 'f': ch = '\f'; break;
                case 'u': {
                    unsigned v = 0, k;
                    for (k = 0; k < 4 && i + 1 < len && isxdigit((unsigned char)json[i + 1]); k++)
                        v = v * 16 +
                            (unsigned)(isdigit((unsigned char)json[i + 1])
                                           ? json[i + 1] - '0'
                                           : (tolower((unsigned char)json[i + 1]) - 'a' + 10)),
                        i++;
                    ch = v < 0x80 && v >= 0x20 ? (char)v : '?';
                    break;
                }
                default: break; /* \" \\ \/ */
                }
            }
            if (o + 1 >= outlen)
                return MS_ETOOBIG;
            out[o++] = ch;
        }
        if (i >= len)
            return 0; /* unterminated */
        out[o] = '\0';
        return 1;
    }
    return 0;
}

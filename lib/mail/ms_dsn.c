/*
 * ms_dsn.c - DSN messages and reply classes (ms_dsn.h).
 */
#include "ms_dsn.h"
#include "ms_error.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void ms_dsn_date(int64_t t_us, char *out, size_t outlen)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(t_us / 1000000);
    struct tm tm;

    gmtime_r(&t, &tm);
    /* Not strftime: the names must not depend on the locale. */
    snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* A field value of ours must stay on its line. */
static int has_crlf(const char *s)
{
    return s && strpbrk(s, "\r\n") != NULL;
}

/* Append text as 7-bit printable ASCII on one line: controls and 8-bit
 * octets become '?', at most MS_DSN_DIAG_MAX octets ("..." when cut). */
static int append_clean(struct ms_buf *out, const char *s)
{
    char tmp[MS_DSN_DIAG_MAX + 4];
    size_t i, n = 0;

    for (i = 0; s[i] && n < MS_DSN_DIAG_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        tmp[n++] = c >= 0x20 && c < 0x7f ? (char)c : c == '\t' ? ' ' : '?';
    }
    if (s[i]) {
        memcpy(tmp + n, "...", 3);
        n += 3;
    }
    return ms_buf_append(out, tmp, n);
}

static const char *action_name(enum ms_dsn_action a)
{
    switch (a) {
    case MS_DSN_FAILED: return "failed";
    case MS_DSN_DELAYED: return "delayed";
    case MS_DSN_DELIVERED: return "delivered";
    case MS_DSN_RELAYED: return "relayed";
    }
    return "failed";
}

/* Length of the header section, its final empty line included (or the whole
 * message if it has no body). */
static size_t header_len(const char *msg, size_t len)
{
    size_t i;

    if (len >= 2 && msg[0] == '\r' && msg[1] == '\n')
        return 2;
    for (i = 0; i + 3 < len; i++)
        if (msg[i] == '\r' && msg[i + 1] == '\n' && msg[i + 2] == '\r' && msg[i + 3] == '\n')
            return i + 4;
    return len;
}

int ms_xtext_encode(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    unsigned char c;

    if (outlen == 0)
        return MS_ETOOBIG;
    for (; *s; s++) {
        c = (unsigned char)*s;
        if (c >= '!' && c <= '~' && c != '+' && c != '=') {
            if (o + 1 >= outlen)
                goto full;
            out[o++] = (char)c;
            continue;
        }
        if (o + 3 >= outlen)
            goto full;
        out[o++] = '+';
        out[o++] = hex[c >> 4];
        out[o++] = hex[c & 15];
    }
    out[o] = '\0';
    return (int)o;
full:
    out[0] = '\0';
    return MS_ETOOBIG;
}

size_t ms_dsn_notify_param(uint32_t bits, char *out, size_t outlen)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } names[] = {{MS_DSN_NOTIFY_SUCCESS, "SUCCESS"},
                 {MS_DSN_NOTIFY_FAILURE, "FAILURE"},
                 {MS_DSN_NOTIFY_DELAY, "DELAY"}};
    const uint32_t all = MS_DSN_NOTIFY_SUCCESS | MS_DSN_NOTIFY_FAILURE | MS_DSN_NOTIFY_DELAY |
                         MS_DSN_NOTIFY_NEVER;
    size_t i, n = 0;
    int w;

    if (outlen == 0)
        return 0;
    out[0] = '\0';
    /* §4.1: NEVER stands alone. */
    if (bits == 0 || (bits & ~all) ||
        ((bits & MS_DSN_NOTIFY_NEVER) && bits != MS_DSN_NOTIFY_NEVER))
        return 0;
    if (bits == MS_DSN_NOTIFY_NEVER) {
        w = snprintf(out, outlen, "NEVER");
        return w > 0 && (size_t)w < outlen ? (size_t)w : (out[0] = '\0', 0);
    }
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(bits & names[i].bit))
            continue;
        w = snprintf(out + n, outlen - n, "%s%s", n ? "," : "", names[i].name);
        if (w < 0 || (size_t)w >= outlen - n) {
            out[0] = '\0';
            return 0;
        }
        n += (size_t)w;
    }
    return n;
}

int ms_dsn_build(const struct ms_dsn *in, struct ms_buf *out)
{
    char date[64], boundary[160];
    const struct ms_dsn_rcpt *r;
    size_t i, ret_len;
    int full, nfailed = 0, ndelayed = 0, err = 0;
    const char *subject;

    if (in->nrcpts == 0 || has_crlf(in->reporting_mta) || has_crlf(in->queue_id) ||
        has_crlf(in->to) || has_crlf(in->orig_queue_id))
        return MS_EINVAL;
    for (i = 0; i < in->nrcpts; i++) {
        r = &in->rcpts[i];
        if (has_crlf(r->final_rcpt) || has_crlf(r->orcpt) || has_crlf(r->status) ||
            has_crlf(r->remote_mta))
            return MS_EINVAL;
        nfailed += r->action == MS_DSN_FAILED;
        ndelayed += r->action == MS_DSN_DELAYED;
    }
    /* RFC 3461 §4.3: RET=HDRS returns the headers, RET=FULL the whole
     * message; without RET we choose: whole, unless it is big.  RET speaks
     * of "failed" DSNs: a report without a failure (delays, successes)
     * returns the headers unless RET=FULL asks for more. */
    if (nfailed > 0)
        full = !in->ret_hdrs && (in->ret_full || in->message_len <= MS_DSN_RETURN_FULL_MAX);
    else
        full = !in->ret_hdrs && in->ret_full;
    ret_len = full ? in->message_len : header_len(in->message, in->message_len);
    snprintf(boundary, sizeof(boundary), "%s/%s", in->queue_id, in->reporting_mta);
    ms_dsn_date(in->now_us, date, sizeof(date));
    subject = nfailed    ? "Undelivered Mail Returned to Sender"
              : ndelayed ? "Delayed Mail (still being retried)"
                         : "Successful Mail Delivery Report";

#define OUT(...)                                                                               \
    do {                                                                                       \
        if ((err = ms_buf_appendf(out, __VA_ARGS__)) < 0)                                      \
            return err;                                                                        \
    } while (0)
#define CLEAN(s)                                                                               \
    do {                                                                                       \
        if ((err = append_clean(out, s)) < 0)                                                  \
            return err;                                                                        \
    } while (0)

    /* RFC 3464 §2 and RFC 6522: the report as a whole. */
    OUT("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", in->reporting_mta);
    OUT("To: <%s>\r\n", in->to);
    OUT("Subject: %s\r\n", subject);
    OUT("Date: %s\r\n", date);
    OUT("Message-ID: <%s@%s>\r\n", in->queue_id, in->reporting_mta);
    /* RFC 3834 §5: so that auto-responders leave it alone. */
    OUT("Auto-Submitted: auto-replied\r\n");
    OUT("MIME-Version: 1.0\r\n");
    OUT("Content-Type: multipart/report; report-type=delivery-status;\r\n"
        "\tboundary=\"%s\"\r\n", boundary);
    OUT("Content-Transfer-Encoding: %s\r\n", full ? "8bit" : "7bit");
    OUT("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    /* The human-readable part. */
    OUT("--%s\r\nContent-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n", boundary);
    OUT("This is the mail system at host %s.\r\n\r\n", in->reporting_mta);
    if (nfailed)
        OUT("I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients. The reasons are below.\r\n\r\n");
    else if (ndelayed)
        OUT("Your message could not be delivered yet to the recipients below.\r\n"
            "The mail system will keep trying; you do not need to send it again.\r\n\r\n");
    else
        /* RFC 3461 §5.2.2 and §5.2.3: what each action promises. */
        OUT("You asked to be told when your message was delivered.\r\n"
            "\"delivered\": it is in the recipient's mailbox.\r\n"
            "\"relayed\": it went on to a system that sends no such notices,\r\n"
            "so this is the last you will hear of it unless it fails later.\r\n\r\n");
    for (i = 0; i < in->nrcpts; i++) {
        r = &in->rcpts[i];
        OUT("<");
        CLEAN(r->final_rcpt);
        OUT(">: %s", r->action == MS_DSN_DELIVERED ? "delivered; "
                     : r->action == MS_DSN_RELAYED ? "relayed; " : "");
        if (r->remote_mta)
            OUT("host %s said: ", r->remote_mta);
        CLEAN(r->diagnostic ? r->diagnostic : r->status);
        OUT("\r\n\r\n");
    }

    /* RFC 3464 §2.2: per-message fields. */
    OUT("--%s\r\nContent-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n", boundary);
    OUT("Reporting-MTA: dns; %s\r\n", in->reporting_mta);
    if (in->orig_queue_id)
        OUT("X-Mailstream-Queue-ID: %s\r\n", in->orig_queue_id);
    if (in->envid) {
        /* RFC 3461 §4.4: ENVID goes back as it came (xtext-decoded here,
         * so anything outside printable ASCII is replaced). */
        OUT("Original-Envelope-Id: ");
        CLEAN(in->envid);
        OUT("\r\n");
    }
    if (in->arrival_us > 0) {
        ms_dsn_date(in->arrival_us, date, sizeof(date));
        OUT("Arrival-Date: %s\r\n", date);
    }
    /* RFC 3464 §2.3: per-recipient fields, each group after an empty line. */
    for (i = 0; i < in->nrcpts; i++) {
        r = &in->rcpts[i];
        OUT("\r\n");
        if (r->orcpt) {
            OUT("Original-Recipient: ");
            CLEAN(r->orcpt);
            OUT("\r\n");
        }
        OUT("Final-Recipient: rfc822; ");
        CLEAN(r->final_rcpt);
        OUT("\r\nAction: %s\r\n", action_name(r->action));
        OUT("Status: %s\r\n", r->status);
        if (r->remote_mta)
            OUT("Remote-MTA: dns; %s\r\n", r->remote_mta);
        if (r->diagnostic && r->code > 0) {
            OUT("Diagnostic-Code: smtp; ");
            CLEAN(r->diagnostic);
            OUT("\r\n");
        } else if (r->diagnostic) {
            OUT("Diagnostic-Code: X-Mailstream; ");
            CLEAN(r->diagnostic);
            OUT("\r\n");
        }
        if (r->last_attempt_us > 0) {
            ms_dsn_date(r->last_attempt_us, date, sizeof(date));
            OUT("Last-Attempt-Date: %s\r\n", date);
        }
        if (r->action == MS_DSN_DELAYED && r->will_retry_until_us > 0) {
            ms_dsn_date(r->will_retry_until_us, date, sizeof(date));
            OUT("Will-Retry-Until: %s\r\n", date);
        }
    }

    /* The returned message (RFC 3462 / RFC 6522 §3). */
    OUT("\r\n--%s\r\nContent-Description: %s Message%s\r\nContent-Type: %s\r\n\r\n",
        boundary, nfailed || ndelayed ? "Undelivered" : "Delivered", full ? "" : " Headers",
        full ? "message/rfc822" : "text/rfc822-headers");
    if ((err = ms_buf_append(out, in->message, ret_len)) < 0)
        return err;
    if (ret_len < 2 || in->message[ret_len - 2] != '\r' || in->message[ret_len - 1] != '\n')
        OUT("\r\n");
    OUT("\r\n--%s--\r\n", boundary);
#undef OUT
#undef CLEAN
    return 0;
}

/* ---- reply classes ---- */

const char *ms_reply_class_name(enum ms_reply_class c)
{
    static const char *const names[MS_CLASS__N] = {
        "ok", "bad_mailbox", "mailbox_full", "policy", "dns", "tls", "too_large", "network",
        "other",
    };
    return (unsigned)c < MS_CLASS__N ? names[c] : "other";
}

static int contains(const char *text, const char *word)
{
    return text && strcasestr(text, word) != NULL;
}

enum ms_reply_class ms_reply_class(int code, const char *dsn, const char *text, int *hard)
{
    int subject = -1, detail = -1, klass = 0;
    enum ms_reply_class c;

    if (dsn && dsn[0] && sscanf(dsn, "%d.%d.%d", &klass, &subject, &detail) != 3)
        subject = detail = -1;
    if (code >= 200 && code < 300) {
        *hard = 0;
        return MS_CLASS_OK;
    }
    /* RFC 3463 §3 subjects, then words servers use without codes. */
    /* X.7.30: REQUIRETLS support required (registered by RFC 8689). */
    if ((subject == 7 && (detail == 10 || detail == 5 || detail == 4 || detail == 30)) ||
        contains(text, "STARTTLS") || contains(text, " TLS"))
        c = MS_CLASS_TLS;
    else if (subject == 2 && detail == 2)
        c = MS_CLASS_MAILBOX_FULL;
    else if ((subject == 3 && detail == 4) || (subject == 2 && detail == 3))
        c = MS_CLASS_TOO_LARGE;
    else if ((subject == 1 && (detail == 2 || detail == 10)) || (subject == 4 && detail == 3))
        c = MS_CLASS_DNS;
    else if (subject == 1)
        c = MS_CLASS_BAD_MAILBOX;
    else if (subject == 7)
        c = MS_CLASS_POLICY;
    else if (contains(text, "quota") || contains(text, "mailbox full") ||
             contains(text, "mailbox is full"))
        c = MS_CLASS_MAILBOX_FULL;
    else if (contains(text, "user unknown") || contains(text, "no such user") ||
             contains(text, "unknown user") || contains(text, "does not exist"))
        c = MS_CLASS_BAD_MAILBOX;
    else if (contains(text, "spam") || contains(text, "blocked") || contains(text, "blacklist") ||
             contains(text, "blocklist") || contains(text, "policy"))
        c = MS_CLASS_POLICY;
    else if (code == 552 || contains(text, "too large") || contains(text, "too big"))
        c = MS_CLASS_TOO_LARGE;
    else if (code == 0 || subject == 4)
        c = MS_CLASS_NETWORK;
    else
        c = MS_CLASS_OTHER;
    /* Permanent is what the server said, except a full mailbox: it empties
     * (RFC 3463 §3.3 calls 5.2.2 "persistent transient" in spirit). */
    if (code == 0)
        *hard = klass == 5;
    else
        *hard = code >= 500 && c != MS_CLASS_MAILBOX_FULL;
    return c;
}

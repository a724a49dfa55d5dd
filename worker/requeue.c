/*
 * requeue.c - the DSN and retry records of a delivery round (requeue.h).
 */
#include "requeue.h"
#include "dsn_rules.h"
#include "ms_buf.h"
#include "ms_dsn.h"
#include "ms_mem.h"

#include <stdlib.h>
#include <string.h>

size_t wk_requeue_dsn_owed(const struct wk_rcpt *rcpts, size_t n)
{
    size_t i, owed = 0;

    for (i = 0; i < n; i++)
        owed += (rcpts[i].in_dsn && !rcpts[i].dsn_done) || rcpts[i].warn_in_dsn;
    return owed;
}

int wk_requeue_dsn(const struct wk_requeue_conf *conf, const ms_envelope *env,
                   const struct wk_rcpt *rcpts, const char *dsn_qid, int64_t now_us, uint8_t **buf,
                   size_t *len, struct wk_requeue_dsn_counts *counts)
{
    const ms_envelope_mail_from *mf = env->mail_from;
    size_t i, n = 0, nrcpts = env->n_recipients;
    struct ms_dsn_rcpt *dr;
    char(*status)[MS_REPLY_DSN_MAX + 1];
    struct ms_envelope_dsn de;
    struct ms_dsn in;
    struct ms_buf out;
    int err;

    memset(counts, 0, sizeof(*counts));
    *buf = NULL;
    *len = 0;
    dr = ms_calloc(nrcpts, sizeof(*dr));
    status = ms_calloc(nrcpts, sizeof(*status));
    for (i = 0; i < nrcpts; i++) {
        const struct wk_rcpt *rc = &rcpts[i];
        const ms_envelope_rcpt *er = env->recipients[i];
        int owed = rc->in_dsn && !rc->dsn_done;
        int failed = owed && rc->state == WK_RCPT_BOUNCED && wk_notify_failure(er->notify);
        int success = owed && rc->state == WK_RCPT_DELIVERED; /* NOTIFY checked already */
        if (!failed && !success && !rc->warn_in_dsn)
            continue;
        dr[n].final_rcpt = rc->addr;
        dr[n].orcpt = er->orcpt && er->orcpt[0] ? er->orcpt : NULL;
        dr[n].action = failed ? MS_DSN_FAILED : success ? rc->dsn_action : MS_DSN_DELAYED;
        counts->success += success;
        wk_dsn_status(status[n], sizeof(status[n]), rc->dsn, dr[n].action);
        dr[n].status = status[n];
        dr[n].remote_mta = rc->remote[0] ? rc->remote : NULL;
        dr[n].code = rc->code;
        dr[n].diagnostic = rc->reply;
        dr[n].last_attempt_us = rc->at_us;
        if (dr[n].action == MS_DSN_DELAYED) {
            /* RFC 3464 §2.3.9: when we give up ([retry] max_age_s). */
            dr[n].will_retry_until_us =
                env->received_at_us > 0 ? env->received_at_us + conf->max_age_s * 1000000 : 0;
            counts->delayed++;
        }
        n++;
    }
    counts->rcpts = n;
    if (n == 0) {
        free(dr);
        free(status);
        return 0;
    }
    memset(&in, 0, sizeof(in));
    in.reporting_mta = conf->helo_name;
    in.queue_id = dsn_qid;
    in.orig_queue_id = env->queue_id;
    in.to = mf->address;
    in.envid = mf->envid && mf->envid[0] ? mf->envid : NULL;
    in.arrival_us = env->received_at_us;
    in.now_us = now_us;
    /* RFC 8689 §5: a notice on a REQUIRETLS message returns the headers only. */
    in.ret_hdrs = mf->ret == MS_ENV_RET_HDRS || mf->requiretls;
    in.ret_full = mf->ret == MS_ENV_RET_FULL && !mf->requiretls;
    in.message = (const char *)env->message.data;
    in.message_len = env->message.len;
    in.rcpts = dr;
    in.nrcpts = n;
    ms_buf_init(&out, env->message.len + MS_DSN_REPORT_MAX);
    err = ms_dsn_build(&in, &out);
    free(dr);
    free(status);
    if (err < 0) {
        ms_buf_free(&out);
        return err;
    }
    memset(&de, 0, sizeof(de));
    de.queue_id = dsn_qid;
    de.received_at_us = now_us;
    de.node = conf->node_id;
    de.to = mf->address;
    de.requiretls = mf->requiretls;
    de.dsn_for = env->queue_id;
    de.message = out.data;
    de.len = out.len;
    *buf = ms_envelope_encode_dsn(&de, len);
    ms_buf_free(&out);
    return 1;
}

int wk_requeue_tier(unsigned attempt, int tiers)
{
    int tier = attempt < (unsigned)tiers ? (int)attempt : tiers;

    return tier < 1 ? 1 : tier;
}

uint8_t *wk_requeue_retry(const struct wk_requeue_conf *conf, const ms_envelope *env,
                          const struct wk_rcpt *rcpts, unsigned attempt, int64_t next_attempt_us,
                          int tier, size_t *len)
{
    size_t i, nkeep = 0, nadd = 0, n = env->n_recipients;
    size_t *keep = ms_calloc(n + 1, sizeof(*keep));
    struct ms_envelope_attempt *add = ms_calloc(n + 1, sizeof(*add));
    uint8_t *buf;

    for (i = 0; i < n; i++) {
        const struct wk_rcpt *rc = &rcpts[i];
        if (rc->state == WK_RCPT_PENDING)
            keep[nkeep++] = i;
        if (!rc->tried)
            continue;
        add[nadd].at_us = rc->at_us;
        add[nadd].recipient = rc->addr;
        add[nadd].worker_node = conf->node_id;
        add[nadd].relay = rc->relay;
        add[nadd].code = (uint32_t)rc->code;
        add[nadd].dsn = rc->dsn;
        add[nadd].reply = rc->reply;
        nadd++;
    }
    buf = ms_envelope_encode_retry(env, keep, nkeep, add, nadd, attempt, next_attempt_us,
                                   (uint32_t)tier, len);
    free(keep);
    free(add);
    return buf;
}

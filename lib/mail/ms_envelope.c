/*
 * ms_envelope.c - the envelope and its builders (ms_envelope.h).
 */
#include "ms_envelope.h"
#include "ms_dsn.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)MS_ENV_NOTIFY_SUCCESS == (int)MS_DSN_NOTIFY_SUCCESS &&
                   (int)MS_ENV_NOTIFY_FAILURE == (int)MS_DSN_NOTIFY_FAILURE &&
                   (int)MS_ENV_NOTIFY_DELAY == (int)MS_DSN_NOTIFY_DELAY &&
                   (int)MS_ENV_NOTIFY_NEVER == (int)MS_DSN_NOTIFY_NEVER,
               "the envelope's Notify and ms_dsn.h's NOTIFY bits differ");
_Static_assert((int)MS_ENV_RET_FULL == (int)MS_DSN_RET_FULL &&
                   (int)MS_ENV_RET_HDRS == (int)MS_DSN_RET_HDRS,
               "the envelope's Ret and ms_dsn.h's RET differ");

void ms_envelope_init(ms_envelope *e)
{
    mailstream__envelope__init(e);
    e->version = MS_ENVELOPE_VERSION;
}

/* protobuf-c wants char * for strings it only reads when packing. */
static char *str(const char *s)
{
    return (char *)(s ? s : "");
}

uint8_t *ms_envelope_encode(const ms_envelope *e, size_t *len)
{
    size_t n = mailstream__envelope__get_packed_size(e);
    uint8_t *buf = ms_malloc(n);

    *len = mailstream__envelope__pack(e, buf);
    return buf;
}

ms_envelope *ms_envelope_decode(const void *buf, size_t len, char *err, size_t errlen)
{
    ms_envelope *e = mailstream__envelope__unpack(NULL, len, buf);

    if (e == NULL) {
        snprintf(err, errlen, "malformed envelope (%zu bytes)", len);
        return NULL;
    }
    if (e->version != MS_ENVELOPE_VERSION) {
        snprintf(err, errlen, "unknown envelope version %u (this build reads %u)", e->version,
                 MS_ENVELOPE_VERSION);
        goto bad;
    }
    if (e->queue_id == NULL || *e->queue_id == '\0') {
        snprintf(err, errlen, "envelope without a queue id");
        goto bad;
    }
    if (e->n_recipients == 0) {
        snprintf(err, errlen, "envelope %s without recipients", e->queue_id);
        goto bad;
    }
    return e;
bad:
    mailstream__envelope__free_unpacked(e, NULL);
    return NULL;
}

void ms_envelope_free(ms_envelope *e)
{
    if (e)
        mailstream__envelope__free_unpacked(e, NULL);
}

uint8_t *ms_envelope_encode_dsn(const struct ms_envelope_dsn *in, size_t *len)
{
    Mailstream__Envelope env;
    Mailstream__MailFrom from;
    Mailstream__Recipient rcpt, *rcpts[1];

    ms_envelope_init(&env);
    mailstream__mail_from__init(&from);
    mailstream__recipient__init(&rcpt);
    from.address = "";
    from.body = MAILSTREAM__BODY__BODY_8BITMIME;
    from.requiretls = in->requiretls;
    rcpt.address = (char *)in->to;
    rcpt.notify = MAILSTREAM__NOTIFY__NOTIFY_NEVER;
    rcpts[0] = &rcpt;
    env.queue_id = (char *)in->queue_id;
    env.received_at_us = in->received_at_us;
    env.frontend_node = (char *)in->node;
    env.mail_from = &from;
    env.n_recipients = 1;
    env.recipients = rcpts;
    env.direction = MAILSTREAM__DIRECTION__DIRECTION_OUTBOUND;
    env.message.data = (uint8_t *)in->message;
    env.message.len = in->len;
    env.dsn_for = (char *)in->dsn_for;
    return ms_envelope_encode(&env, len);
}

uint8_t *ms_envelope_encode_retry(const ms_envelope *e, const size_t *keep, size_t nkeep,
                                  const struct ms_envelope_attempt *add, size_t nadd,
                                  uint32_t attempt_count, int64_t next_attempt_us,
                                  uint32_t retry_tier, size_t *len)
{
    Mailstream__Envelope env = *e; /* shallow: points into e, which outlives the encoding */
    Mailstream__Recipient **rcpts = ms_calloc(nkeep + 1, sizeof(*rcpts));
    Mailstream__Attempt **atts = ms_calloc(e->n_attempts + nadd + 1, sizeof(*atts));
    Mailstream__Attempt *att = ms_calloc(nadd + 1, sizeof(*att));
    uint8_t *buf;
    size_t i, na = 0;

    for (i = 0; i < nkeep; i++)
        rcpts[i] = e->recipients[keep[i]];
    for (i = 0; i < e->n_attempts; i++)
        atts[na++] = e->attempts[i];
    for (i = 0; i < nadd; i++) {
        mailstream__attempt__init(&att[i]);
        att[i].at_us = add[i].at_us;
        att[i].recipient = (char *)add[i].recipient;
        att[i].worker_node = (char *)add[i].worker_node;
        att[i].relay = (char *)add[i].relay;
        att[i].code = add[i].code;
        att[i].dsn = (char *)add[i].dsn;
        att[i].reply = (char *)add[i].reply;
        atts[na++] = &att[i];
    }
    env.n_recipients = nkeep;
    env.recipients = rcpts;
    env.n_attempts = na;
    env.attempts = atts;
    env.attempt_count = attempt_count;
    env.next_attempt_us = next_attempt_us;
    env.retry_tier = retry_tier;
    buf = ms_envelope_encode(&env, len);
    free(rcpts);
    free(atts);
    free(att);
    return buf;
}

uint8_t *ms_envelope_encode_tx(const struct ms_envelope_tx *tx, size_t *len)
{
    Mailstream__Envelope env;
    Mailstream__Client cl;
    Mailstream__MailFrom mf;
    Mailstream__Recipient *rr, **rp;
    uint8_t *buf;
    size_t i;

    ms_envelope_init(&env);
    mailstream__client__init(&cl);
    mailstream__mail_from__init(&mf);
    cl.ip = str(tx->client.ip);
    cl.port = tx->client.port;
    cl.helo = str(tx->client.helo);
    cl.tls_version = str(tx->client.tls_version);
    cl.tls_cipher = str(tx->client.tls_cipher);
    cl.auth_user = str(tx->client.auth_user);
    cl.listener = str(tx->client.listener);
    cl.proxy_peer_ip = str(tx->client.proxy_peer_ip);
    cl.listener_role = str(tx->client.listener_role);
    mf.address = str(tx->mail_from.address);
    mf.body = tx->mail_from.body;
    mf.smtputf8 = tx->mail_from.smtputf8;
    mf.size = tx->mail_from.size;
    mf.ret = tx->mail_from.ret;
    mf.envid = str(tx->mail_from.envid);
    mf.requiretls = tx->mail_from.requiretls;
    rr = ms_calloc(tx->nrcpts + 1, sizeof(*rr));
    rp = ms_calloc(tx->nrcpts + 1, sizeof(*rp));
    for (i = 0; i < tx->nrcpts; i++) {
        mailstream__recipient__init(&rr[i]);
        rr[i].address = str(tx->rcpts[i].address);
        rr[i].notify = tx->rcpts[i].notify;
        rr[i].orcpt = str(tx->rcpts[i].orcpt);
        rp[i] = &rr[i];
    }
    env.queue_id = str(tx->queue_id);
    env.received_at_us = tx->received_at_us;
    env.frontend_node = str(tx->frontend_node);
    env.client = tx->client.ip ? &cl : NULL;
    env.mail_from = &mf;
    env.n_recipients = tx->nrcpts;
    env.recipients = rp;
    env.direction = tx->direction;
    env.message.data = (uint8_t *)tx->message;
    env.message.len = tx->len;
    env.quarantine = str(tx->quarantine);
    buf = ms_envelope_encode(&env, len);
    free(rr);
    free(rp);
    return buf;
}

ms_envelope *ms_envelope_new_tx(const struct ms_envelope_tx *tx)
{
    size_t len;
    uint8_t *buf = ms_envelope_encode_tx(tx, &len);
    ms_envelope *e = mailstream__envelope__unpack(NULL, len, buf);

    free(buf);
    if (e == NULL) /* what we packed ourselves: a broken invariant */
        ms_panic("event=envelope_unpack_failed queue_id=%s", str(tx->queue_id));
    return e;
}

void ms_envelope_set_auth(ms_envelope *e, int spf_mailfrom_pass, const char *dkim_aligned)
{
    Mailstream__Auth *a = ms_malloc(sizeof(*a));

    /* The envelope owns it: protobuf-c frees it with the envelope. */
    mailstream__auth__init(a);
    a->evaluated = 1;
    a->spf_mailfrom_pass = spf_mailfrom_pass != 0;
    if (dkim_aligned && dkim_aligned[0])
        a->dkim_aligned_domain = ms_strdup(dkim_aligned);
    if (e->auth)
        mailstream__auth__free_unpacked(e->auth, NULL);
    e->auth = a;
}

/*
 * ms_envelope.c - the envelope and its builders (ms_envelope.h).
 */
#include "ms_envelope.h"
#include "ms_dsn.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <stddef.h>
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

/* Every envelope this module decodes is the first member of a box that
 * says where a borrowed message lies: protobuf-c frees the envelope with
 * the system allocator (free_unpacked with a NULL allocator), and
 * &box->env == box, so freeing the envelope frees the box. */
struct env_box {
    ms_envelope env;
    const uint8_t *lo, *hi; /* the record a borrowed message points into; NULL: owned */
};
_Static_assert(offsetof(struct env_box, env) == 0, "the envelope must open its box");

/* Move what protobuf-c unpacked into a box (only the top-level struct is
 * copied; what it points to moves with it). */
static ms_envelope *box(ms_envelope *e, const uint8_t *lo, const uint8_t *hi)
{
    struct env_box *b = ms_malloc(sizeof(*b));

    b->env = *e;
    b->lo = lo;
    b->hi = hi;
    free(e); /* the struct alone: protobuf-c's default allocator is malloc */
    return &b->env;
}

static int borrowed(const ms_envelope *e)
{
    const struct env_box *b = (const struct env_box *)e;

    return b->lo != NULL && e->message.data >= b->lo && e->message.data < b->hi;
}

uint8_t *ms_envelope_encode(const ms_envelope *e, size_t *len)
{
    size_t n = mailstream__envelope__get_packed_size(e);
    uint8_t *buf = ms_malloc(n);

    *len = mailstream__envelope__pack(e, buf);
    return buf;
}

/* Checks of a decoded envelope; frees it and says why when it fails. */
static ms_envelope *checked(ms_envelope *e, size_t len, char *err, size_t errlen)
{
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
    ms_envelope_free(e);
    return NULL;
}

ms_envelope *ms_envelope_decode(const void *buf, size_t len, char *err, size_t errlen)
{
    ms_envelope *e = mailstream__envelope__unpack(NULL, len, buf);

    return checked(e ? box(e, NULL, NULL) : NULL, len, err, errlen);
}

/* ---- the wire walk of ms_envelope_decode_borrow ---- */

/* A varint of at most max octets at p[*i..n): 0 and the value, or -1. */
static int wire_varint(const uint8_t *p, size_t n, size_t *i, unsigned max, uint64_t *v)
{
    uint64_t r = 0;
    unsigned k;

    for (k = 0; k < max && *i < n; k++) {
        uint8_t b = p[(*i)++];

        r |= (uint64_t)(b & 0x7f) << (7 * k);
        if ((b & 0x80) == 0) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* Walk the top-level fields of p[0..n): copy every field but the message
 * (wire type 2 under MS_ENVELOPE_FIELD_MESSAGE) to rest (room for n
 * octets), and say where the last message field's octets are.  -1 when
 * the wire data is malformed. */
static int wire_split(const uint8_t *p, size_t n, uint8_t *rest, size_t *restlen, size_t *moff,
                      size_t *mlen, int *found)
{
    size_t i = 0, start;
    uint64_t tag, v;

    *restlen = 0;
    *found = 0;
    while (i < n) {
        start = i;
        /* As protobuf-c reads a tag: at most MS_ENVELOPE_WIRE_PREFIX_MAX
         * octets (a field number of up to 32 bits), and field number 0 is
         * refused when the first octet says so (a non-minimal zero is an
         * unknown field to it, kept in rest like any other). */
        if ((p[i] & 0xf8) == 0 ||
            wire_varint(p, n, &i, MS_ENVELOPE_WIRE_PREFIX_MAX, &tag) != 0)
            return -1;
        switch (tag & 7) {
        case 0: /* varint */
            if (wire_varint(p, n, &i, MS_ENVELOPE_WIRE_VARINT_MAX, &v) != 0)
                return -1;
            break;
        case 1: /* 64-bit */
            if (n - i < 8)
                return -1;
            i += 8;
            break;
        case 5: /* 32-bit */
            if (n - i < 4)
                return -1;
            i += 4;
            break;
        case 2: /* length-delimited */
            if (wire_varint(p, n, &i, MS_ENVELOPE_WIRE_PREFIX_MAX, &v) != 0 || v > n - i)
                return -1;
            if ((tag >> 3) == MS_ENVELOPE_FIELD_MESSAGE) {
                *moff = i;
                *mlen = (size_t)v;
                *found = 1;
                i += (size_t)v;
                continue; /* not copied */
            }
            i += (size_t)v;
            break;
        default: /* 3, 4: groups (not in proto3, protobuf-c refuses them); 6, 7: none */
            return -1;
        }
        memcpy(rest + *restlen, p + start, i - start);
        *restlen += i - start;
    }
    return 0;
}

ms_envelope *ms_envelope_decode_borrow(const void *buf, size_t len, char *err, size_t errlen)
{
    const uint8_t *p = buf;
    uint8_t *rest = ms_malloc(len ? len : 1);
    size_t restlen, moff = 0, mlen = 0;
    int found;
    ms_envelope *e = NULL;

    /* Everything but the message is a few hundred octets: copying those to
     * unpack them is cheap; the message stays where it is. */
    if (wire_split(p, len, rest, &restlen, &moff, &mlen, &found) == 0 &&
        (e = mailstream__envelope__unpack(NULL, restlen, rest)) != NULL) {
        e = box(e, p, p + len);
        if (found && mlen > 0) {
            e->message.data = (uint8_t *)(p + moff); /* borrowed: never written */
            e->message.len = mlen;
        }
    }
    free(rest);
    return checked(e, len, err, errlen);
}

void ms_envelope_set_message(ms_envelope *e, uint8_t *data, size_t len)
{
    if (!borrowed(e))
        free(e->message.data);
    e->message.data = data;
    e->message.len = len;
}

void ms_envelope_free(ms_envelope *e)
{
    if (e == NULL)
        return;
    if (borrowed(e)) { /* not protobuf-c's to free */
        e->message.data = NULL;
        e->message.len = 0;
    }
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

/* The protobuf-c structs of a transaction's envelope, pointing into tx
 * (and rr, rp, which the caller frees after packing). */
struct tx_env {
    Mailstream__Envelope env;
    Mailstream__Client cl;
    Mailstream__MailFrom mf;
    Mailstream__Recipient *rr, **rp;
};

static void tx_env_build(struct tx_env *t, const struct ms_envelope_tx *tx)
{
    size_t i;

    ms_envelope_init(&t->env);
    mailstream__client__init(&t->cl);
    mailstream__mail_from__init(&t->mf);
    t->cl.ip = str(tx->client.ip);
    t->cl.port = tx->client.port;
    t->cl.helo = str(tx->client.helo);
    t->cl.tls_version = str(tx->client.tls_version);
    t->cl.tls_cipher = str(tx->client.tls_cipher);
    t->cl.auth_user = str(tx->client.auth_user);
    t->cl.listener = str(tx->client.listener);
    t->cl.proxy_peer_ip = str(tx->client.proxy_peer_ip);
    t->cl.listener_role = str(tx->client.listener_role);
    t->mf.address = str(tx->mail_from.address);
    t->mf.body = tx->mail_from.body;
    t->mf.smtputf8 = tx->mail_from.smtputf8;
    t->mf.size = tx->mail_from.size;
    t->mf.ret = tx->mail_from.ret;
    t->mf.envid = str(tx->mail_from.envid);
    t->mf.requiretls = tx->mail_from.requiretls;
    t->rr = ms_calloc(tx->nrcpts + 1, sizeof(*t->rr));
    t->rp = ms_calloc(tx->nrcpts + 1, sizeof(*t->rp));
    for (i = 0; i < tx->nrcpts; i++) {
        mailstream__recipient__init(&t->rr[i]);
        t->rr[i].address = str(tx->rcpts[i].address);
        t->rr[i].notify = tx->rcpts[i].notify;
        t->rr[i].orcpt = str(tx->rcpts[i].orcpt);
        t->rp[i] = &t->rr[i];
    }
    t->env.queue_id = str(tx->queue_id);
    t->env.received_at_us = tx->received_at_us;
    t->env.frontend_node = str(tx->frontend_node);
    t->env.client = tx->client.ip ? &t->cl : NULL;
    t->env.mail_from = &t->mf;
    t->env.n_recipients = tx->nrcpts;
    t->env.recipients = t->rp;
    t->env.direction = tx->direction;
    t->env.quarantine = str(tx->quarantine);
}

static void tx_env_free(struct tx_env *t)
{
    free(t->rr);
    free(t->rp);
}

uint8_t *ms_envelope_encode_tx(const struct ms_envelope_tx *tx, size_t *len)
{
    struct tx_env t;
    uint8_t *buf;

    tx_env_build(&t, tx);
    t.env.message.data = (uint8_t *)tx->message;
    t.env.message.len = tx->len;
    buf = ms_envelope_encode(&t.env, len);
    tx_env_free(&t);
    return buf;
}

_Static_assert(MS_ENVELOPE_FIELD_MESSAGE < 16, "the message field's tag must be one octet");

/* Octets of v as a protobuf varint. */
static size_t varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

int ms_envelope_encode_tx_in(const struct ms_envelope_tx *tx, struct ms_buf *b, size_t off,
                             size_t *start, size_t *len)
{
    struct tx_env t;
    size_t mlen, head, tail, k;
    uint8_t *p;
    char *q;
    uint64_t v;

    if (off > b->len)
        return -1;
    mlen = b->len - off;
    /* The length prefix is read as 32 bits at most (protobuf-c, and
     * MS_ENVELOPE_WIRE_PREFIX_MAX in ms_envelope_decode_borrow). */
    if (mlen > UINT32_MAX)
        return -1;
    head = mlen > 0 ? 1 + varint_len(mlen) : 0; /* an empty message is left out, as protobuf-c does */
    if (off < head)
        return -1;
    tx_env_build(&t, tx);
    tail = mailstream__envelope__get_packed_size(&t.env);
    if ((q = ms_buf_reserve(b, tail)) == NULL) {
        tx_env_free(&t);
        return -1;
    }
    /* Every field but the message after it, as protobuf-c packs them... */
    if (mailstream__envelope__pack(&t.env, (uint8_t *)q) != tail)
        ms_panic("event=envelope_pack_size_changed queue_id=%s", str(tx->queue_id));
    tx_env_free(&t);
    ms_buf_commit(b, tail);
    /* ...and the message field's tag and length right before it. */
    p = (uint8_t *)b->data + off - head;
    if (head > 0) {
        p[0] = (uint8_t)(MS_ENVELOPE_FIELD_MESSAGE << 3 | 2); /* wire type 2: length-delimited */
        for (v = mlen, k = 1; v >= 0x80; v >>= 7)
            p[k++] = (uint8_t)(v | 0x80);
        p[k] = (uint8_t)v;
    }
    *start = off - head;
    *len = head + mlen + tail;
    return 0;
}

ms_envelope *ms_envelope_new_tx(const struct ms_envelope_tx *tx)
{
    size_t len;
    uint8_t *buf = ms_envelope_encode_tx(tx, &len);
    ms_envelope *e = mailstream__envelope__unpack(NULL, len, buf);

    free(buf);
    if (e == NULL) /* what we packed ourselves: a broken invariant */
        ms_panic("event=envelope_unpack_failed queue_id=%s", str(tx->queue_id));
    return box(e, NULL, NULL);
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

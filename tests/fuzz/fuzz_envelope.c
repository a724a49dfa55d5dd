/*
 * fuzz_envelope.c - libFuzzer target: the envelope decoders (a Kafka record
 * is wire data too).  Seeds: envelopes our own encoder wrote
 * (tests/fuzz/seed_envelope.c, `make fuzz-seeds`) and hand-made wire shapes
 * (the message first, twice, padded lengths).
 *
 * Invariants:
 * - an envelope the decoder accepts, our encoder writes again as one the
 *   decoder accepts too, and writing that one gives the same octets (a
 *   worker re-produces what it decoded, to a retry tier or as a DSN's
 *   original: it must not turn into a record no worker can read);
 * - ms_envelope_decode_borrow (the worker's, with its own walk of the wire
 *   data) accepts exactly what ms_envelope_decode (protobuf-c alone)
 *   accepts, with the same reason when not, and the same envelope (written
 *   again to the same octets), its message pointing into the input;
 * - the accepted envelope's transaction (what the frontend knows of one),
 *   built by ms_envelope_encode_tx_in() around its message where it lies,
 *   ends its buffer, and both decoders read from it what they read from
 *   ms_envelope_encode_tx()'s record (written again: the same octets); in
 *   a buffer that may not grow by the other fields it refuses.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"

/* The transaction e was made from (the fields a frontend fills), its
 * record built both ways. */
static void check_around(const ms_envelope *e)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt *rc = calloc(e->n_recipients + 1, sizeof(*rc));
    size_t i, clen, head = MS_ENVELOPE_TX_HEAD_MAX, start, rlen, len1, len2;
    uint8_t *copy, *rec, *again1, *again2;
    struct ms_buf b;
    char err[256];
    ms_envelope *d1, *d2;

    memset(&tx, 0, sizeof(tx));
    tx.queue_id = e->queue_id;
    tx.received_at_us = e->received_at_us;
    tx.frontend_node = e->frontend_node;
    if (e->client) {
        tx.client.ip = e->client->ip;
        tx.client.port = e->client->port;
        tx.client.helo = e->client->helo;
        tx.client.tls_version = e->client->tls_version;
        tx.client.tls_cipher = e->client->tls_cipher;
        tx.client.auth_user = e->client->auth_user;
        tx.client.listener = e->client->listener;
        tx.client.listener_role = e->client->listener_role;
        tx.client.proxy_peer_ip = e->client->proxy_peer_ip;
    }
    if (e->mail_from) {
        tx.mail_from.address = e->mail_from->address;
        tx.mail_from.body = e->mail_from->body;
        tx.mail_from.smtputf8 = e->mail_from->smtputf8;
        tx.mail_from.size = e->mail_from->size;
        tx.mail_from.ret = e->mail_from->ret;
        tx.mail_from.envid = e->mail_from->envid;
        tx.mail_from.requiretls = e->mail_from->requiretls;
    }
    for (i = 0; i < e->n_recipients; i++) {
        rc[i].address = e->recipients[i]->address;
        rc[i].notify = e->recipients[i]->notify;
        rc[i].orcpt = e->recipients[i]->orcpt;
    }
    tx.rcpts = rc;
    tx.nrcpts = e->n_recipients;
    tx.direction = e->direction;
    tx.message = e->message.data;
    tx.len = e->message.len;
    tx.quarantine = e->quarantine;
    copy = ms_envelope_encode_tx(&tx, &clen);
    ms_buf_init(&b, head + tx.len);
    ms_buf_reserve(&b, head);
    ms_buf_commit(&b, head);
    if (tx.len > 0 && ms_buf_append(&b, tx.message, tx.len) != 0)
        __builtin_trap();
    if (ms_envelope_encode_tx_in(&tx, &b, head, &start, &rlen) != -1 || b.len != head + tx.len)
        __builtin_trap(); /* the fields never take 0 octets: there is a queue id */
    b.max = head + tx.len + clen;
    if (ms_envelope_encode_tx_in(&tx, &b, head, &start, &rlen) != 0 || start > head ||
        start + rlen != b.len || rlen != clen)
        __builtin_trap();
    rec = (uint8_t *)b.data + start;
    d1 = ms_envelope_decode(rec, rlen, err, sizeof(err));
    d2 = ms_envelope_decode_borrow(rec, rlen, err, sizeof(err));
    if (d1 == NULL || d2 == NULL)
        __builtin_trap();
    again1 = ms_envelope_encode(d1, &len1);
    again2 = ms_envelope_encode(d2, &len2);
    if (len1 != clen || len2 != clen || memcmp(again1, copy, clen) != 0 ||
        memcmp(again2, copy, clen) != 0)
        __builtin_trap();
    free(again1);
    free(again2);
    ms_envelope_free(d1);
    ms_envelope_free(d2);
    ms_buf_free(&b);
    free(copy);
    free(rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256], err2[256];
    ms_envelope *e = ms_envelope_decode(data, size, err, sizeof(err)), *again;
    ms_envelope *b = ms_envelope_decode_borrow(data, size, err2, sizeof(err2));
    uint8_t *once, *twice, *borrowed;
    size_t len1, len2, len3;

    if ((e == NULL) != (b == NULL))
        __builtin_trap();
    if (e == NULL) {
        if (strcmp(err, err2) != 0)
            __builtin_trap();
        return 0;
    }
    if (b->message.len > 0 &&
        (b->message.data < data || b->message.data + b->message.len > data + size))
        __builtin_trap();
    once = ms_envelope_encode(e, &len1);
    borrowed = ms_envelope_encode(b, &len3);
    if (len1 != len3 || memcmp(once, borrowed, len1) != 0)
        __builtin_trap();
    again = ms_envelope_decode(once, len1, err, sizeof(err));
    if (again == NULL)
        __builtin_trap();
    twice = ms_envelope_encode(again, &len2);
    if (len1 != len2 || memcmp(once, twice, len1) != 0)
        __builtin_trap();
    check_around(e);
    free(once);
    free(twice);
    free(borrowed);
    ms_envelope_free(again);
    ms_envelope_free(e);
    ms_envelope_free(b);
    return 0;
}

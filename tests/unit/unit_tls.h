/*
 * unit_tls.h - certificates for unit tests, made at run time with
 * OpenSSL's API (nothing checked in, nothing expires): a test CA and leaf
 * certificates it signs, each for the names given, written as PEM files
 * into a fresh directory under /tmp.  Include after <cmocka.h>; any
 * failure fails the test.
 *
 *   unit_tls_dir()                      a new directory (the caller removes it
 *                                       with unit_tls_rmdir)
 *   unit_tls_ca(dir, "ca")              dir/ca.pem, dir/ca.key: a CA
 *   unit_tls_leaf(dir, "mx", "ca", sans) dir/mx.pem, dir/mx.key, signed by ca,
 *                                       subjectAltName `sans` in OpenSSL's
 *                                       syntax ("DNS:mx.test,IP:127.0.0.1")
 *   unit_tls_server(dir, "mx", "other") an ms_conn server context: mx by
 *                                       default, other chosen by SNI
 *   unit_tls_client(dir, "ca")          an ms_conn client context trusting ca
 */
#ifndef UNIT_TLS_H
#define UNIT_TLS_H

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_conn.h"

#define UNIT_TLS_PATH_MAX 256

static inline void unit_tls_path(char *out, const char *dir, const char *name, const char *ext)
{
    snprintf(out, UNIT_TLS_PATH_MAX, "%s/%s.%s", dir, name, ext);
}

static inline char *unit_tls_dir(void)
{
    char tmpl[] = "/tmp/mailstream_unit_tlsXXXXXX";

    assert_non_null(mkdtemp(tmpl));
    return strdup(tmpl);
}

static inline void unit_tls_rmdir(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[UNIT_TLS_PATH_MAX * 2];

    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

static inline void unit_tls_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

static inline void unit_tls_write(const char *dir, const char *name, X509 *x, EVP_PKEY *key)
{
    char path[UNIT_TLS_PATH_MAX];
    FILE *f;

    unit_tls_path(path, dir, name, "pem");
    assert_non_null(f = fopen(path, "w"));
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    unit_tls_path(path, dir, name, "key");
    assert_non_null(f = fopen(path, "w"));
    assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

/* The certificate and key written by unit_tls_write(dir, name, ...). */
static inline void unit_tls_read(const char *dir, const char *name, X509 **x, EVP_PKEY **key)
{
    char path[UNIT_TLS_PATH_MAX];
    FILE *f;

    unit_tls_path(path, dir, name, "pem");
    assert_non_null(f = fopen(path, "r"));
    *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    unit_tls_path(path, dir, name, "key");
    assert_non_null(f = fopen(path, "r"));
    *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(*x);
    assert_non_null(*key);
}

/* A certificate for `cn` and `key`, valid from an hour ago for a day,
 * issued by `issuer` (NULL: by itself); the caller adds extensions and
 * signs it. */
static inline X509 *unit_tls_cert(const char *cn, EVP_PKEY *key, X509 *issuer)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();

    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    assert_int_equal(X509_set_pubkey(x, key), 1);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    assert_int_equal(X509_set_subject_name(x, name), 1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name), 1);
    X509_NAME_free(name);
    return x;
}

static inline void unit_tls_ca(const char *dir, const char *name)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x;

    assert_non_null(key);
    x = unit_tls_cert(name, key, NULL);
    unit_tls_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
    unit_tls_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    unit_tls_ext(x, x, NID_subject_key_identifier, "hash");
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    unit_tls_write(dir, name, x, key);
    X509_free(x);
    EVP_PKEY_free(key);
}

static inline void unit_tls_leaf(const char *dir, const char *name, const char *ca,
                                 const char *sans)
{
    EVP_PKEY *key = EVP_EC_gen("P-256"), *cakey;
    X509 *cacert, *x;

    assert_non_null(key);
    unit_tls_read(dir, ca, &cacert, &cakey);
    x = unit_tls_cert(name, key, cacert);
    unit_tls_ext(x, cacert, NID_basic_constraints, "critical,CA:FALSE");
    unit_tls_ext(x, cacert, NID_ext_key_usage, "serverAuth");
    unit_tls_ext(x, cacert, NID_authority_key_identifier, "keyid");
    unit_tls_ext(x, cacert, NID_subject_alt_name, sans);
    assert_true(X509_sign(x, cakey, EVP_sha256()) > 0);
    unit_tls_write(dir, name, x, key);
    X509_free(x);
    X509_free(cacert);
    EVP_PKEY_free(key);
    EVP_PKEY_free(cakey);
}

static inline struct ms_tls_ctx *unit_tls_server(const char *dir, const char *def,
                                                 const char *sni)
{
    char pem[2][UNIT_TLS_PATH_MAX], key[2][UNIT_TLS_PATH_MAX], err[256];
    struct ms_tls_cert certs[2];
    struct ms_tls_ctx *ctx;

    unit_tls_path(pem[0], dir, def, "pem");
    unit_tls_path(key[0], dir, def, "key");
    unit_tls_path(pem[1], dir, sni, "pem");
    unit_tls_path(key[1], dir, sni, "key");
    certs[0] = (struct ms_tls_cert){"default", pem[0], key[0], NULL};
    certs[1] = (struct ms_tls_cert){sni, pem[1], key[1], NULL}; /* names from the certificate */
    if ((ctx = ms_tls_ctx_new_server(certs, 2, NULL, err, sizeof(err))) == NULL)
        fail_msg("%s", err);
    return ctx;
}

static inline struct ms_tls_ctx *unit_tls_client(const char *dir, const char *ca)
{
    char pem[UNIT_TLS_PATH_MAX], err[256];
    struct ms_tls_ctx *ctx;

    unit_tls_path(pem, dir, ca, "pem");
    if ((ctx = ms_tls_ctx_new_client(pem, err, sizeof(err))) == NULL)
        fail_msg("%s", err);
    return ctx;
}

#endif

/*
 * fuzz_wk_classify.c - libFuzzer driver for what a remote server's reply
 * reaches: the bounce classifier (worker/classify.c) with the shipped rules
 * (etc/bounce-rules.yaml) and the backoff matcher (worker/shaping.c) with
 * the shipped shaping file (etc/shaping.yaml), both loaded once; and, on
 * the same bytes, the two rule file parsers and lib/core/ms_yaml.c.
 *
 * Input: two bytes of reply code (any value, 0 included), the enhanced
 * status code up to the first space, then the reply text.  Checks: a
 * category in range, "none" exactly for 2yz, a backoff rule only for a
 * non-2yz reply; a parsed rule file is usable and freed without leaks.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/classify.h"
#include "../../worker/shaping.h"

static wk_classifier *rules;
static wk_shaping *shaping;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512];

    (void)argc;
    (void)argv;
    /* make fuzz-smoke runs from the repository root. */
    if (wk_classifier_load("etc/bounce-rules.yaml", &rules, err, sizeof(err)) < 0 ||
        wk_shaping_load("etc/shaping.yaml", &shaping, err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz_wk_classify: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), *dsn, *text, errbuf[256];
    enum wk_category c;
    const struct wk_backoff_rule *r;
    int code = size >= 2 ? (data[0] << 8 | data[1]) % 1000 : 0;
    wk_classifier *cl = NULL;
    wk_shaping *sh = NULL;

    memcpy(s, data, size);
    s[size] = '\0';
    dsn = size >= 2 ? s + 2 : s + size;
    text = strchr(dsn, ' ');
    if (text)
        *text++ = '\0';
    else
        text = dsn + strlen(dsn);
    c = wk_classify(rules, code, dsn, text);
    assert((unsigned)c < WK_CAT__N);
    assert((c == WK_CAT_NONE) == (code >= 200 && code < 300));
    assert(wk_category_parse(wk_category_name(c)) == (int)c);
    assert(wk_classify(NULL, code, dsn, text) < WK_CAT__N);
    r = wk_shaping_match(shaping, "google", code, dsn, text);
    assert(r == NULL || !(code >= 200 && code < 300));
    free(s);

    /* The same bytes as rule files. */
    if (wk_classifier_parse((const char *)data, size, &cl, errbuf, sizeof(errbuf)) == 0) {
        assert(wk_classify(cl, 550, "5.1.1", "x") < WK_CAT__N);
        wk_classifier_free(cl);
    }
    if (wk_shaping_parse((const char *)data, size, &sh, errbuf, sizeof(errbuf)) == 0) {
        const char *h[] = {"mx.example.net"};
        (void)wk_shaping_group(sh, "example.net", h, 1);
        (void)wk_shaping_match(sh, "", 421, "4.7.28", "x");
        wk_shaping_free(sh);
    }
    return 0;
}

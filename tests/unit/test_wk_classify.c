/*
 * test_wk_classify.c - worker/classify.c: the shipped rule set
 * (etc/bounce-rules.yaml) against the corpus of sample replies
 * (tests/unit/data/bounce-corpus.txt, line for line), reply patterns, the
 * RFC 3463 fallback, and rule files that must be refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/classify.h"
#include "ms_error.h"

#define RULES "etc/bounce-rules.yaml"
#define CORPUS "tests/unit/data/bounce-corpus.txt"

static void test_corpus(void **state)
{
    wk_classifier *c = NULL;
    char err[256], line[2048], cat[64], dsn[32];
    FILE *f;
    int code, off, n = 0, wrong = 0, seen[WK_CAT__N] = {0};

    (void)state;
    assert_int_equal(wk_classifier_load(RULES, &c, err, sizeof(err)), 0);
    assert_true(wk_classifier_rules(c) > 10);
    f = fopen(CORPUS, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        enum wk_category got;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        off = 0;
        assert_int_equal(sscanf(line, "%63s %d %31s %n", cat, &code, dsn, &off), 3);
        assert_true(off > 0);
        assert_true(wk_category_parse(cat) >= 0);
        got = wk_classify(c, code, strcmp(dsn, "-") == 0 ? "" : dsn, line + off);
        if (strcmp(wk_category_name(got), cat) != 0) {
            print_error("want %s, got %s: %s\n", cat, wk_category_name(got), line + off);
            wrong++;
        }
        seen[wk_category_parse(cat)]++;
        n++;
    }
    fclose(f);
    assert_true(n >= 50);
    assert_int_equal(wrong, 0);
    /* The corpus covers every category but the catch-all. */
    for (code = 0; code < WK_CAT__N; code++)
        assert_true(seen[code] > 0);
    /* Only the address categories suppress. */
    assert_true(wk_classifier_suppresses(c, WK_CAT_BAD_MAILBOX));
    assert_true(wk_classifier_suppresses(c, WK_CAT_BAD_DOMAIN));
    assert_false(wk_classifier_suppresses(c, WK_CAT_POLICY));
    assert_false(wk_classifier_suppresses(c, WK_CAT_QUOTA));
    wk_classifier_free(c);
}

static void test_fallback(void **state)
{
    (void)state;
    /* No rules: RFC 3463 subjects, then the code. */
    assert_int_equal(wk_classify(NULL, 250, "2.0.0", "ok"), WK_CAT_NONE);
    assert_int_equal(wk_classify(NULL, 550, "5.1.1", ""), WK_CAT_BAD_MAILBOX);
    assert_int_equal(wk_classify(NULL, 550, "5.1.2", ""), WK_CAT_BAD_DOMAIN);
    assert_int_equal(wk_classify(NULL, 556, "5.1.10", ""), WK_CAT_BAD_DOMAIN);
    assert_int_equal(wk_classify(NULL, 452, "4.2.2", ""), WK_CAT_QUOTA);
    assert_int_equal(wk_classify(NULL, 554, "5.7.1", ""), WK_CAT_POLICY);
    assert_int_equal(wk_classify(NULL, 530, "5.7.10", ""), WK_CAT_TLS);
    assert_int_equal(wk_classify(NULL, 554, "5.6.0", ""), WK_CAT_CONTENT);
    assert_int_equal(wk_classify(NULL, 0, "4.4.1", "timeout"), WK_CAT_NETWORK);
    assert_int_equal(wk_classify(NULL, 0, NULL, NULL), WK_CAT_NETWORK);
    assert_int_equal(wk_classify(NULL, 451, "", "later"), WK_CAT_TRANSIENT);
    assert_int_equal(wk_classify(NULL, 554, "junk", "x"), WK_CAT_OTHER);
    assert_true(wk_classifier_suppresses(NULL, WK_CAT_BAD_DOMAIN));
    assert_false(wk_classifier_suppresses(NULL, WK_CAT_RATE_LIMIT));
}

static wk_classifier *parse(const char *text, int want)
{
    wk_classifier *c = NULL;
    char err[256] = "";
    int rc = wk_classifier_parse(text, strlen(text), &c, err, sizeof(err));

    if (rc != want)
        print_error("rc %d (want %d): %s\n", rc, want, err);
    assert_int_equal(rc, want);
    if (want < 0)
        assert_true(err[0] != '\0');
    return c;
}

static void test_patterns(void **state)
{
    wk_classifier *c;
    int e[3];

    (void)state;
    c = parse("suppress: [quota]\n"
              "rules:\n"
              "  - {category: rate_limit, code: [421, 45x], enhanced: '4.7.*'}\n"
              "  - {category: content, code: 5xx, text: 'too (big|large)'}\n"
              "  - {category: routing, enhanced: '*.4.4'}\n",
              0);
    assert_int_equal(wk_classify(c, 421, "4.7.28", "x"), WK_CAT_RATE_LIMIT);
    assert_int_equal(wk_classify(c, 451, "4.7.0", "x"), WK_CAT_RATE_LIMIT);
    /* Code outside the list, or no enhanced code: the rule does not match. */
    assert_int_equal(wk_classify(c, 441, "4.7.0", "x"), WK_CAT_POLICY);
    assert_int_equal(wk_classify(c, 421, "", "x"), WK_CAT_TRANSIENT);
    assert_int_equal(wk_classify(c, 552, "", "Message TOO Large"), WK_CAT_CONTENT);
    assert_int_equal(wk_classify(c, 452, "", "message too large"), WK_CAT_TRANSIENT);
    assert_int_equal(wk_classify(c, 554, "5.4.4", ""), WK_CAT_ROUTING);
    assert_true(wk_classifier_suppresses(c, WK_CAT_QUOTA));
    assert_false(wk_classifier_suppresses(c, WK_CAT_BAD_MAILBOX));
    wk_classifier_free(c);

    assert_int_equal(wk_enhanced_split("5.1.10", e), 0);
    assert_true(e[0] == 5 && e[1] == 1 && e[2] == 10);
    assert_int_equal(wk_enhanced_split("5.1", e), -1);
    assert_true(e[0] == -1 && e[1] == -1 && e[2] == -1);
    assert_int_equal(wk_enhanced_split("5.1.1000", e), -1);
    assert_int_equal(wk_enhanced_split("", e), -1);

    /* An empty file: no rules, the default suppression. */
    c = parse("", 0);
    assert_int_equal(wk_classifier_rules(c), 0);
    assert_true(wk_classifier_suppresses(c, WK_CAT_BAD_MAILBOX));
    wk_classifier_free(c);
}

static void test_refused(void **state)
{
    char big[64 * 1024];
    size_t k;

    (void)state;
    parse("rules: [{category: nonsense}]\n", MS_EINVAL);
    parse("rules: [{category: none}]\n", MS_EINVAL);
    parse("rules: [{category: policy, colour: red}]\n", MS_EINVAL);
    parse("rules: [{category: policy, code: 650}]\n", MS_EINVAL);
    parse("rules: [{category: policy, code: 5x0}]\n", MS_EINVAL);
    parse("rules: [{category: policy, enhanced: '5.1'}]\n", MS_EINVAL);
    parse("rules: [{category: policy, text: 'a(b'}]\n", MS_EINVAL);
    parse("rules: [{category: policy, text: ''}]\n", MS_EINVAL);
    parse("suppress: [policy, nope]\n", MS_EINVAL);
    parse("suppress: policy\n", MS_EINVAL);
    parse("rules: {category: policy}\n", MS_EINVAL);
    parse("- just a list\n", MS_EINVAL);
    parse("rules: [\n", MS_EINVAL);
    parse("a: &x [1]\nb: *x\n", MS_EINVAL);
    parse("a: 1\n---\nb: 2\n", MS_EINVAL);
    /* Nested deeper than MS_YAML_DEPTH_MAX. */
    k = (size_t)snprintf(big, sizeof(big), "rules: ");
    for (int d = 0; d < MS_YAML_DEPTH_MAX + 2; d++)
        big[k++] = '[';
    for (int d = 0; d < MS_YAML_DEPTH_MAX + 2; d++)
        big[k++] = ']';
    big[k] = '\0';
    parse(big, MS_EINVAL);
    /* More rules than the limit. */
    k = (size_t)snprintf(big, sizeof(big), "rules:\n");
    while (k + 40 < sizeof(big))
        k += (size_t)snprintf(big + k, sizeof(big) - k, "- {category: policy}\n");
    parse(big, MS_ETOOBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

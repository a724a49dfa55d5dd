/* libFuzzer target: TLS-RPT text (ms_tlsrpt.h): the input as an
 * _smtp._tls TXT record, and as a Redis hash of counts (split into
 * field/value pairs at NUL octets) turned into a report that must be
 * JSON-shaped and gzip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ms_tlsrpt.h"

#define FUZZ_FIELDS_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_tlsrpt_rua rua;
    struct ms_tlsrpt_kv kv[FUZZ_FIELDS_MAX];
    struct ms_tlsrpt_report r = {
        "org", "contact@example.net", "id@example.net", 0, 86400, "example.com", kv, 0};
    struct ms_buf out, gz;
    const char *p = (const char *)data, *end = p + size, *z;
    size_t i, n = 0;

    if (ms_tlsrpt_txt_parse((const char *)data, size, &rua) == 0) {
        if (rua.n == 0 || rua.n > MS_TLSRPT_RUA_MAX)
            abort();
        for (i = 0; i < rua.n; i++)
            if (strncasecmp(rua.uri[i], "mailto:", 7) != 0 &&
                strncasecmp(rua.uri[i], "https://", 8) != 0)
                abort();
    }
    /* Pairs of NUL-separated strings. */
    while (p < end && n < FUZZ_FIELDS_MAX) {
        z = memchr(p, 0, (size_t)(end - p));
        kv[n].key = p;
        kv[n].klen = (size_t)((z ? z : end) - p);
        p = z ? z + 1 : end;
        z = memchr(p, 0, (size_t)(end - p));
        kv[n].value = p;
        kv[n].vlen = (size_t)((z ? z : end) - p);
        p = z ? z + 1 : end;
        n++;
    }
    r.nfields = n;
    ms_buf_init(&out, MS_TLSRPT_JSON_MAX);
    if (ms_tlsrpt_report_json(&r, &out) == 0) {
        if (out.len < 2 || out.data[0] != '{' || out.data[out.len - 1] != '}')
            abort();
        ms_buf_init(&gz, MS_TLSRPT_JSON_MAX);
        if (ms_tlsrpt_gzip(out.data, out.len, &gz) != 0)
            abort();
        ms_buf_free(&gz);
    }
    ms_buf_free(&out);
    return 0;
}

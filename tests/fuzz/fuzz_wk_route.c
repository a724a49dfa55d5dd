/*
 * fuzz_wk_route.c - libFuzzer driver for the worker's routing inputs
 * (lib/mail/ms_route.c: transport map lines and transports) and the reply
 * classifier (lib/mail/ms_dsn.c), all of which take operator or remote text.
 *
 * Each input line is added to a transport map (hosts and texts must be
 * NUL-terminated within their limits) and read as a domain map key
 * (lib/mail/ms_domainmap.c): every key accepted must find itself again, a
 * domain through the lookup as well; the whole input is also classified
 * as a reply text.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_domainmap.h"
#include "ms_dsn.h"
#include "ms_error.h"
#include "ms_route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    ms_transport_map *m = ms_transport_map_new();
    ms_domainmap *dm = ms_domainmap_new();
    char key[MS_DOMAINMAP_KEY_MAX + 1];
    int kind;
    struct ms_transport t;
    char err[256], *text;
    size_t pos = 0, len;
    int hard, r;

    while (pos < size) {
        const char *nl = memchr(buf + pos, '\n', size - pos);
        len = nl ? (size_t)(nl - (buf + pos)) : size - pos;
        r = ms_transport_map_add(m, buf + pos, len, err, sizeof(err));
        assert(r == 0 || r == MS_EINVAL || r == MS_ETOOBIG);
        assert(r == 0 || strlen(err) < sizeof(err));
        r = ms_transport_parse(buf + pos, len, &t, err, sizeof(err));
        if (r == 0) {
            assert(strlen(t.host) <= MS_DNS_NAME_MAX);
            assert(strlen(t.text) <= MS_TRANSPORT_TEXT_MAX);
            assert(strlen(t.path) <= MS_TRANSPORT_PATH_MAX);
            assert(t.port >= 0 && t.port <= 65535);
            assert(t.kind != MS_TRANSPORT_ERROR || t.dsn[0] == '4' || t.dsn[0] == '5');
        }
        kind = ms_domainmap_key(buf + pos, len, key, sizeof(key));
        assert(kind < 0 || strlen(key) <= MS_DOMAINMAP_KEY_MAX);
        if (kind >= 0) {
            /* The normalised key is a spelling of itself. */
            assert(ms_domainmap_put(dm, key, strlen(key), NULL, NULL) == kind);
            assert(ms_domainmap_get(dm, key) != NULL);
            assert(strcmp(ms_domainmap_get(dm, key)->key, key) == 0);
            if (kind == MS_DOMAINMAP_EXACT)
                assert(strcmp(ms_domainmap_lookup(dm, key)->key, key) == 0);
        }
        pos += len + 1;
    }
    ms_domainmap_free(dm);
    assert(ms_transport_map_size(m) <= MS_TRANSPORT_MAP_MAX);
    ms_transport_map_lookup(m, "example.org");
    ms_transport_map_free(m);

    text = malloc(size + 1);
    memcpy(text, buf, size);
    text[size] = '\0';
    assert((unsigned)ms_reply_class(size > 0 ? 400 + data[0] % 200 : 0, text, text, &hard) <
           MS_CLASS__N);
    assert(hard == 0 || hard == 1);
    free(text);
    return 0;
}

/* libFuzzer target: the operations HTTP request parser. */
#include <stddef.h>
#include <stdint.h>

#include "ms_error.h"
#include "ms_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_http_request req;
    int r = ms_http_parse_request((const char *)data, size, &req);

    if (r > 0 && ((size_t)r > size || req.method + req.method_len > (const char *)data + size ||
                  req.path + req.path_len > (const char *)data + size))
        __builtin_trap();
    return 0;
}

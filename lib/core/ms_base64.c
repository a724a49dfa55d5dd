#include "ms_base64.h"
#include "ms_error.h"

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int ms_base64_decode(const char *in, size_t n, uint8_t *out, size_t max, int flags)
{
    uint32_t acc = 0;
    size_t o = 0, chars = 0, pad = 0, k;
    int v;

    for (k = 0; k < n; k++) {
        unsigned char c = (unsigned char)in[k];

        if ((flags & MS_BASE64_SKIP_FWS) && (c == ' ' || c == '\t' || c == '\r' || c == '\n'))
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad || (v = b64val(c)) < 0)
            return MS_EPROTO; /* data after padding, or not base64 */
        acc = acc << 6 | (uint32_t)v;
        if (++chars % 4 == 0) {
            if (o + 3 > max)
                return MS_ETOOBIG;
            out[o++] = (uint8_t)(acc >> 16);
            out[o++] = (uint8_t)(acc >> 8);
            out[o++] = (uint8_t)acc;
            acc = 0;
        }
    }
    switch (chars % 4) {
    case 0:
        return pad ? MS_EPROTO : (int)o;
    case 2:
        if (pad != 2 && !(pad == 0 && (flags & MS_BASE64_PAD_OPTIONAL)))
            return MS_EPROTO;
        if (o + 1 > max)
            return MS_ETOOBIG;
        out[o++] = (uint8_t)(acc >> 4);
        return (int)o;
    case 3:
        if (pad != 1 && !(pad == 0 && (flags & MS_BASE64_PAD_OPTIONAL)))
            return MS_EPROTO;
        if (o + 2 > max)
            return MS_ETOOBIG;
        out[o++] = (uint8_t)(acc >> 10);
        out[o++] = (uint8_t)(acc >> 2);
        return (int)o;
    default:
        return MS_EPROTO; /* one character cannot hold a byte */
    }
}

size_t ms_base64_encode(const void *in, size_t n, char *out, size_t outlen)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t i, o = 0;

    for (i = 0; i < n && o + 5 <= outlen; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    if (o < outlen)
        out[o] = '\0';
    return o;
}

#include "ms_error.h"

const char *ms_err_name(int err)
{
    switch (err) {
    case MS_OK: return "MS_OK";
#define X(name, msg) case MS_E##name: return "MS_E" #name;
    MS_ERRNO_MAP(X)
#undef X
    default: return "unknown";
    }
}

const char *ms_strerror(int err)
{
    switch (err) {
    case MS_OK: return "success";
#define X(name, msg) case MS_E##name: return msg;
    MS_ERRNO_MAP(X)
#undef X
    default: return "unknown error";
    }
}

#include "ms_queueid.h"
#include "ms_log.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/time.h>

static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static _Atomic uint64_t counter;

void ms_queueid_new(char out[MS_QUEUEID_LEN + 1])
{
    struct timeval tv;
    uint64_t ms, rnd, seq;
    int i;

    gettimeofday(&tv, NULL);
    ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
        ms_panic("getrandom failed");
    seq = atomic_fetch_add(&counter, 1);
    /* 10 chars of time (50 bits), 11 chars of random ^ counter (55 bits). */
    for (i = 9; i >= 0; i--) {
        out[i] = alphabet[ms & 31];
        ms >>= 5;
    }
    rnd ^= seq * 0x9E3779B97F4A7C15ULL;
    for (i = 20; i >= 10; i--) {
        out[i] = alphabet[rnd & 31];
        rnd >>= 5;
    }
    out[MS_QUEUEID_LEN] = '\0';
}

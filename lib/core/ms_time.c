/*
 * ms_time.c - the wall clock (ms_time.h).
 */
#include "ms_time.h"

#include <stddef.h>
#include <sys/time.h>

int64_t ms_time_now_us(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

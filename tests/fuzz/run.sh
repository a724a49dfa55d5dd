#!/bin/sh
# Run libFuzzer targets over their seed corpora; used by `make fuzz-smoke`
# (part of `make test`) and `make fuzz`.
#
#   tests/fuzz/run.sh [libFuzzer options] -- build-fuzz/fuzz_x [build-fuzz/fuzz_y ...]
#
# Each target reads tests/fuzz/corpus/<target> (its committed seeds: a
# missing or empty folder is a failure, so a target cannot silently run on
# nothing) and keeps what it finds in build-fuzz/corpus-<target>.  Its full
# output goes to build-fuzz/log-<target>.txt; only the last line (the run's
# statistics) is shown unless it fails.  A crash, a sanitizer finding (the
# fuzz build makes UBSan fatal), a leak or a timeout fails the target: its
# log tail and the input that did it (build-fuzz/artifacts-<target>/) are
# shown, the other targets still run, and the script exits 1.
set -u

opts=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    opts="$opts $1"
    shift
done
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
    echo "usage: $0 [libFuzzer options] -- target..." >&2
    exit 2
fi

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=
for f in "$@"; do
    n=$(basename "$f")
    seeds=tests/fuzz/corpus/$n
    echo "== $n"
    if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
        echo "$n: no seed corpus in $seeds" >&2
        failed="$failed $n"
        continue
    fi
    mkdir -p "build-fuzz/corpus-$n" "build-fuzz/artifacts-$n"
    log=build-fuzz/log-$n.txt
    # shellcheck disable=SC2086 # opts are separate libFuzzer options
    "$f" $opts -artifact_prefix="build-fuzz/artifacts-$n/" \
        "build-fuzz/corpus-$n" "$seeds" >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        tail -n 1 "$log"
    else
        echo "$n: FAILED (exit $rc); the end of $log:" >&2
        tail -n 40 "$log" >&2
        failed="$failed $n"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz targets failed:$failed" >&2
    exit 1
fi

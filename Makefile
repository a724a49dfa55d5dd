# Mailstream build.  `make` builds, `make run` starts a local cluster,
# `make test` runs every test (installing what it needs first).

CC        ?= cc
BUILD     ?= build
CACHE     ?= $(or $(MAILSTREAM_CACHE),$(HOME)/.cache/mailstream)
VENV      := $(CACHE)/venv
PKGS      := rdkafka hiredis libuv libprotobuf-c openssl inih
WARN      := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
OPT       ?= -O2 -g
SAN       ?=
CFLAGS_ALL = $(WARN) $(OPT) $(SAN) -MMD -MP -Ilib/core -Ilib/mail -Ilib/io -I$(BUILD)/gen \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
LDLIBS_ALL = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lunbound -lopendmarc -lcrypt -lpthread -lm $(LDLIBS)

PROTOS    := $(wildcard proto/*.proto)
GEN_C     := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
GEN_H     := $(GEN_C:.c=.h)
LIB_SRC   := $(wildcard lib/core/*.c lib/mail/*.c lib/io/*.c)
FE_SRC    := $(filter-out frontend/main.c,$(wildcard frontend/*.c))
WK_SRC    := $(filter-out worker/main.c,$(wildcard worker/*.c))
obj        = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIB_A     := $(BUILD)/libmailstream.a
FE_A      := $(BUILD)/libfrontend.a
WK_A      := $(BUILD)/libworker.a
BINS      := $(BUILD)/mailstream-frontend $(BUILD)/mailstream-worker $(BUILD)/mailstream-ctl \
             $(BUILD)/mailstream-authcheck

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all deps run test unit cycles integration asan fuzz fuzz-smoke fuzz-seeds fmt clean bench
.DEFAULT_GOAL := all
.SECONDARY:

all: $(BINS)

deps:
	@bash cluster/deps.sh

run: deps all
	@exec cluster/local up

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<
	@sed -i '1i /* generated from $< by protoc-c: do not edit */' $(BUILD)/gen/$*.pb-c.c $(BUILD)/gen/$*.pb-c.h

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Wno-error -c -o $@ $<

$(BUILD)/obj/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(LIB_A): $(call obj,$(LIB_SRC)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(GEN_C))
	@rm -f $@
	ar rcs $@ $^

$(FE_A): $(call obj,$(FE_SRC))
	@rm -f $@
	ar rcs $@ $^ $(if $^,,)

$(WK_A): $(call obj,$(WK_SRC))
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/mailstream-frontend: $(call obj,frontend/main.c) $(FE_A) $(LIB_A)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/mailstream-worker: $(call obj,worker/main.c) $(WK_A) $(LIB_A)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL)

# Tools sit beside the programs and may use the worker's stages (its
# mail-authentication stage): they reach its headers by this path, never
# by "../worker/...".
$(BUILD)/obj/tools/%.o: CFLAGS_ALL += -Iworker

$(BUILD)/mailstream-authcheck: $(call obj,tools/authcheck.c) $(WK_A) $(LIB_A)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/mailstream-ctl: $(call obj,$(wildcard ctl/*.c)) $(LIB_A)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/%: $(call obj,tests/unit/%.c) $(FE_A) $(WK_A) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL) -lcmocka -lyaml

# Unit tests: cmocka, one binary per tests/unit/test_*.c; then no cycle
# between modules.
unit: $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do echo "== $$t"; $$t || fail=1; done; \
	    $(MAKE) --no-print-directory cycles || fail=1; exit $$fail

# No two modules (a .c with its .h) depend on each other, through includes
# or through the symbols their objects take (tools/check_cycles.py).
cycles: $(BINS) $(UNIT_BINS)
	@python3 tools/check_cycles.py --self-test
	@python3 tools/check_cycles.py --objects $(BUILD)/obj .

# Integration tests: pytest against real Redis, Kafka and SMTP peers.
# INTEGRATION_TESTS narrows the run (a file or file::test), PYTEST_ARGS adds options:
#   make integration INTEGRATION_TESTS=tests/integration/test_worker_client.py PYTEST_ARGS=-x
INTEGRATION_TESTS ?= tests/integration
integration: all
	MAILSTREAM_BUILD_DIR=$(abspath $(BUILD)) PYTHONDONTWRITEBYTECODE=1 \
	    $(VENV)/bin/python -m pytest -p no:cacheprovider -q $(INTEGRATION_TESTS) $(PYTEST_ARGS)

test: deps
	$(MAKE) all unit fuzz-smoke
	$(MAKE) integration

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	    all unit integration

# libFuzzer targets (clang).  fuzz-smoke (part of `make test`) runs each over
# its seed corpus and a fixed number of generated inputs, so the targets keep
# building and running; `make fuzz` runs each for a bounded time.  Both fail
# on a crash, a sanitizer finding (UBSan is fatal here, as in `make asan`),
# or a target without seeds (tests/fuzz/run.sh).
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
FUZZ_RUNS ?= 20000
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -MMD -MP -Ilib/core -Ilib/mail -Ilib/io -I$(BUILD)/gen \
               $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_SAN  := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OBJS := $(patsubst %.c,build-fuzz/obj/%.o,$(LIB_SRC) $(FE_SRC) $(WK_SRC)) \
             $(patsubst $(BUILD)/gen/%.c,build-fuzz/obj/gen/%.o,$(GEN_C))
# Objects built with other flags (an older checkout) are rebuilt: the stamp
# is named after the flags.
FUZZ_STAMP := build-fuzz/flags-$(shell echo '$(FUZZ_CFLAGS) $(FUZZ_SAN)' | cksum | cut -d' ' -f1)
$(FUZZ_STAMP):
	@mkdir -p build-fuzz
	@rm -f build-fuzz/flags-*
	@touch $@
build-fuzz/obj/gen/%.o: $(BUILD)/gen/%.c $(FUZZ_STAMP)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c -o $@ $<
build-fuzz/obj/%.o: %.c $(GEN_H) $(FUZZ_STAMP)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c -o $@ $<
build-fuzz/libfuzz.a: $(FUZZ_OBJS)
	@rm -f $@
	ar rcs $@ $^
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c build-fuzz/libfuzz.a $(FUZZ_STAMP)
	clang $(FUZZ_CFLAGS) -MF build-fuzz/fuzz_$*.d -fsanitize=fuzzer $(FUZZ_SAN) -o $@ \
	    $< build-fuzz/libfuzz.a $(LDLIBS_ALL)

# `make fuzz`: each target for FUZZ_SECONDS (not part of `make test`).
FUZZ_SECONDS ?= 60
fuzz: $(FUZZ_BINS)
	@sh tests/fuzz/run.sh -max_total_time=$(FUZZ_SECONDS) -- $(FUZZ_BINS)

fuzz-smoke: $(FUZZ_BINS)
	@sh tests/fuzz/run.sh -runs=$(FUZZ_RUNS) -seed=1 -- $(FUZZ_BINS)

# The seeds of fuzz_envelope are envelopes our own encoder wrote
# (tests/fuzz/seed_envelope.c); after a change to proto/envelope.proto, run
# this and commit what changed in tests/fuzz/corpus/fuzz_envelope/.
$(BUILD)/tests/seed_envelope: $(call obj,tests/fuzz/seed_envelope.c) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(SAN) -o $@ $^ $(LDLIBS_ALL)
fuzz-seeds: $(BUILD)/tests/seed_envelope
	$(BUILD)/tests/seed_envelope tests/fuzz/corpus/fuzz_envelope

# Benchmarks against Postfix (bench/README.md); e.g. BENCH_ARGS=--quick (~4-5 min).
bench: deps all
	MAILSTREAM_BUILD_DIR=$(abspath $(BUILD)) PYTHONDONTWRITEBYTECODE=1 \
	    $(VENV)/bin/python bench/run.py $(BENCH_ARGS)

fmt:
	clang-format -i $(wildcard lib/*/*.[ch] frontend/*.[ch] worker/*.[ch] ctl/*.[ch] tools/*.[ch] tests/unit/*.c tests/fuzz/*.c)

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj build-fuzz -name '*.d' 2>/dev/null)

#!/usr/bin/env bash
# cluster/deps.sh - install everything Mailstream needs to build, run and test.
#
# Run by `make deps`. Idempotent: every step checks before it acts, so a second
# run is a fast no-op. Three steps:
#   1. Debian packages (compilers, C libraries, redis-server, postfix for
#      smtp-sink, swaks, kcat, Java and Maven).
#   2. The Apache Kafka broker jars, fetched with Maven from cluster/kafka/pom.xml
#      into $MAILSTREAM_CACHE/kafka-<version>/lib (outside the repository).
#   3. The Python virtualenv for tests/integration at $MAILSTREAM_CACHE/venv.
#
# Environment:
#   MAILSTREAM_CACHE   cache directory (default: $HOME/.cache/mailstream)
#   MAILSTREAM_SKIP_APT=1  skip step 1 (e.g. on a machine that is not Debian)
#
# Exits non-zero on the first failure.
set -euo pipefail

# Keep in sync with <kafka.version> in cluster/kafka/pom.xml and
# KAFKA_VERSION in cluster/mslocal.py.
KAFKA_VERSION=4.1.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MAILSTREAM_CACHE:-$HOME/.cache/mailstream}
KAFKA_DIR=$CACHE/kafka-$KAFKA_VERSION
VENV=$CACHE/venv
REQS=$ROOT/tests/integration/requirements.txt
POM=$ROOT/cluster/kafka/pom.xml

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"
	elif command -v sudo >/dev/null 2>&1; then sudo "$@"
	else die "need root (or sudo) for: $*"
	fi
}

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
APT_PACKAGES=(
	build-essential pkg-config
	librdkafka-dev libhiredis-dev libssl-dev libuv1-dev
	libprotobuf-c-dev protobuf-c-compiler
	libopendmarc-dev libinih-dev libcmocka-dev libcrypt-dev
	clang libclang-rt-14-dev clang-format
	libunbound-dev libyaml-dev publicsuffix
	redis-server postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl
	kcat openssl curl nsd haproxy
	dovecot-lmtpd dovecot-imapd dovecot-pop3d
	maven
)

java_major() {
	# Prints the major version of the default java, or 0 if there is none.
	command -v java >/dev/null 2>&1 || { echo 0; return; }
	java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}

missing_packages() {
	local p st
	for p in "$@"; do
		st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[ "$st" = "install ok installed" ] || printf '%s\n' "$p"
	done
}

# Keep package maintainer scripts from starting system daemons (a system
# redis-server on 6379 or a Postfix MTA on port 25) while we install.
POLICY_RC=/usr/sbin/policy-rc.d
policy_added=0
block_daemons() {
	if [ ! -e "$POLICY_RC" ]; then
		as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY_RC && chmod 755 $POLICY_RC"
		policy_added=1
	fi
}
unblock_daemons() {
	if [ "$policy_added" = 1 ]; then as_root rm -f "$POLICY_RC"; policy_added=0; fi
}

# Stop and disable the packaged services: we start our own redis-server and
# smtp-sink on chosen loopback ports, and want nothing else on them.
disable_system_daemons() {
	local svc
	for svc in redis-server postfix nsd haproxy dovecot; do
		if [ -d /run/systemd/system ]; then
			as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
		elif [ -x "/etc/init.d/$svc" ]; then
			as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
			if as_root "/etc/init.d/$svc" status >/dev/null 2>&1; then
				say "stopping system $svc daemon"
				as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
			fi
		fi
	done
}

install_apt() {
	if [ "${MAILSTREAM_SKIP_APT:-0}" = 1 ]; then
		say "apt: skipped (MAILSTREAM_SKIP_APT=1)"
		return
	fi
	command -v dpkg-query >/dev/null 2>&1 || die "not a Debian system; set MAILSTREAM_SKIP_APT=1 and install the packages by hand"
	local want=("${APT_PACKAGES[@]}") missing
	if [ "$(java_major)" -lt 17 ]; then
		want+=(default-jre-headless)
	fi
	missing=$(missing_packages "${want[@]}")
	if [ -z "$missing" ]; then
		say "apt: all packages present"
	else
		say "apt: installing $(echo $missing)"
		export DEBIAN_FRONTEND=noninteractive
		# Preseed before postfix is installed, so it does not configure a
		# system MTA. We only need its smtp-sink test program.
		echo 'postfix postfix/main_mailer_type select No configuration' | as_root debconf-set-selections
		echo 'postfix postfix/mailname string localhost' | as_root debconf-set-selections
		block_daemons
		trap unblock_daemons EXIT
		as_root apt-get update -qq || { unblock_daemons; die "apt-get update failed"; }
		# shellcheck disable=SC2086
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
			|| { unblock_daemons; die "apt-get install failed"; }
		unblock_daemons
		trap - EXIT
	fi
	disable_system_daemons
	[ "$(java_major)" -ge 17 ] || die "java >= 17 is required for the Kafka broker (found $(java_major))"
	[ -x /usr/sbin/smtp-sink ] || die "/usr/sbin/smtp-sink missing (package postfix)"
}

# ---------------------------------------------------------------------------
# 2. Kafka broker jars
# ---------------------------------------------------------------------------
install_kafka() {
	local marker=$KAFKA_DIR/.complete stamp
	stamp=$( { cat "$POM"; echo "$KAFKA_VERSION"; } | sha256sum | cut -c1-16)
	if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ]; then
		say "kafka $KAFKA_VERSION: present in $KAFKA_DIR"
		return
	fi
	command -v mvn >/dev/null 2>&1 || die "mvn not found"
	say "kafka $KAFKA_VERSION: fetching jars with Maven into $KAFKA_DIR/lib"
	rm -rf "$KAFKA_DIR.tmp"
	mkdir -p "$KAFKA_DIR.tmp"
	# (sed: Maven's jansi prints colour resets even with -B.)
	mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory="$KAFKA_DIR.tmp/lib" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
		|| die "maven could not fetch kafka $KAFKA_VERSION"
	[ -f "$KAFKA_DIR.tmp/lib/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
	rm -rf "$KAFKA_DIR"
	mv "$KAFKA_DIR.tmp" "$KAFKA_DIR"
	echo "$stamp" > "$marker"
	say "kafka $KAFKA_VERSION: $(ls "$KAFKA_DIR/lib" | wc -l) jars"
}

# ---------------------------------------------------------------------------
# 3. Python virtualenv for the integration tests
# ---------------------------------------------------------------------------
install_venv() {
	local marker=$VENV/.requirements.sha256 stamp
	stamp=$(sha256sum "$REQS" | cut -c1-64)
	if [ -x "$VENV/bin/python" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] \
		&& "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
		say "venv: up to date ($VENV)"
		return
	fi
	command -v python3 >/dev/null 2>&1 || die "python3 not found"
	if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
		say "venv: creating $VENV"
		rm -rf "$VENV"
		python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
	fi
	say "venv: installing $(basename "$REQS")"
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS" \
		|| die "pip install failed"
	echo "$stamp" > "$marker"
}

mkdir -p "$CACHE"
install_apt
install_kafka
install_venv
say "ok"

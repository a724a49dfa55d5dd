#!/usr/bin/env bash
# cluster/deps.sh - install everything Mailstream needs to build, run and test.
#
#   cluster/deps.sh [--check] [apt] [kafka] [venv]
#
# Run by `make deps`. Idempotent: every step checks before it acts, so a second
# run is a fast no-op. Three steps (all of them unless some are named):
#   apt    Debian packages (compilers, C libraries, redis-server, postfix for
#          smtp-sink, nsd, haproxy, dovecot, swaks, kcat, Java and Maven).
#   kafka  The Apache Kafka broker jars, fetched with Maven from
#          cluster/kafka/pom.xml into $MAILSTREAM_CACHE/kafka-<version>/lib
#          (outside the repository).
#   venv   The Python virtualenv for tests/integration at $MAILSTREAM_CACHE/venv.
# --check changes nothing: it says what the steps would do and exits 1 if any
# of them has work left.
#
# System services. We use the programs of redis-server, postfix (smtp-sink),
# nsd, haproxy and dovecot, each started by cluster/mslocal.py or a test with
# a configuration of ours, on loopback ports and state directories of ours; we
# never need the machine's own instances, running or stopped. So a service
# that existed before this script ran is never stopped, restarted, disabled or
# reconfigured (issue 23). A service that appears because we install its
# package is kept from starting while we install (policy-rc.d) and left
# disabled at boot, with a line saying how to enable it.
#
# Environment:
#   MAILSTREAM_CACHE   cache directory (default: $HOME/.cache/mailstream)
#   MAILSTREAM_SKIP_APT=1  skip the apt step (e.g. on a machine that is not Debian)
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
	# Outbound TLS (issue 17): libcurl for MTA-STS policy fetches (lib/io/ms_https.c),
	# ldns-signzone to sign the DNSSEC test zone of test_outbound_dane.py.
	libcurl4-openssl-dev ldnsutils
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

# Services known to the init system: the scripts in /etc/init.d and the
# systemd service and socket units. A name in this list before we install is
# a service the machine already had.
service_names() {
	{
		ls -1 /etc/init.d 2>/dev/null || true
		local d
		for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
			if [ -d "$d" ]; then ls -1 "$d" | grep -E '\.(service|socket)$' || true; fi
		done
	} | { grep -E '^[A-Za-z0-9@._:-]+$' || true; } | sort -u
}

# While we install, keep the maintainer scripts of new packages from starting
# their daemons (invoke-rc.d and deb-systemd-invoke ask policy-rc.d; 101 means
# "forbidden"). Services the machine already had are let through (0), so an
# upgrade pulled in as a dependency restarts them as it would without us. An
# existing policy-rc.d (Docker images have one) is the operator's and is left
# as it is.
POLICY_RC=/usr/sbin/policy-rc.d
policy_added=0
block_new_daemons() {
	local before=$1
	[ -e "$POLICY_RC" ] && return
	{
		echo '#!/bin/sh'
		echo '# Written by Mailstream cluster/deps.sh for the length of one apt-get install.'
		printf 'known=" %s "\n' "$(echo $before)"
		echo 'for a; do case $a in --*) ;; *) id=$a; break ;; esac; done'
		echo 'case "$known" in *" $id "*) exit 0 ;; esac'
		echo 'exit 101'
	} | as_root sh -c "cat > $POLICY_RC && chmod 755 $POLICY_RC"
	policy_added=1
}
unblock_daemons() {
	if [ "$policy_added" = 1 ]; then as_root rm -f "$POLICY_RC"; policy_added=0; fi
}

# Services that appeared while we installed are ours: disable them at boot,
# and stop them if a policy of the operator's let them start.
quiet_new_services() {
	local before=$1 svc
	for svc in $(comm -13 <(printf '%s\n' $before) <(service_names)); do
		if [ -d /run/systemd/system ]; then
			systemctl is-enabled --quiet "$svc" 2>/dev/null \
				|| systemctl is-active --quiet "$svc" 2>/dev/null || continue
			as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
			say "new service $svc: left stopped and disabled (systemctl enable --now $svc to run it)"
		elif [ -x "/etc/init.d/$svc" ]; then
			if as_root "/etc/init.d/$svc" status >/dev/null 2>&1; then
				as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
			fi
			compgen -G "/etc/rc[2-5].d/S[0-9][0-9]$svc" >/dev/null || continue
			as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
			say "new service $svc: left stopped and disabled (update-rc.d $svc enable to run it)"
		fi
	done
}

install_apt() {
	if [ "${MAILSTREAM_SKIP_APT:-0}" = 1 ]; then
		say "apt: skipped (MAILSTREAM_SKIP_APT=1)"
		return
	fi
	command -v dpkg-query >/dev/null 2>&1 || die "not a Debian system; set MAILSTREAM_SKIP_APT=1 and install the packages by hand"
	local want=("${APT_PACKAGES[@]}") missing before
	if [ "$(java_major)" -lt 17 ]; then
		want+=(default-jre-headless)
	fi
	missing=$(missing_packages "${want[@]}")
	if [ -z "$missing" ]; then
		say "apt: all packages present"
	elif [ "$CHECK" = 1 ]; then
		say "apt: would install $(echo $missing)"
		PENDING=1
		return
	else
		say "apt: installing $(echo $missing)"
		export DEBIAN_FRONTEND=noninteractive
		# Preseed a postfix we are about to install, so it does not configure
		# a system MTA: we only need its smtp-sink. (An installed postfix's
		# answers are the operator's.)
		if printf '%s\n' $missing | grep -qx postfix; then
			echo 'postfix postfix/main_mailer_type select No configuration' | as_root debconf-set-selections
			echo 'postfix postfix/mailname string localhost' | as_root debconf-set-selections
		fi
		before=$(service_names)
		block_new_daemons "$before"
		trap unblock_daemons EXIT
		as_root apt-get update -qq || { unblock_daemons; die "apt-get update failed"; }
		# shellcheck disable=SC2086
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
			|| { unblock_daemons; die "apt-get install failed"; }
		unblock_daemons
		trap - EXIT
		quiet_new_services "$before"
	fi
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
	if [ "$CHECK" = 1 ]; then
		say "kafka $KAFKA_VERSION: would fetch the jars into $KAFKA_DIR/lib"
		PENDING=1
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
	if [ "$CHECK" = 1 ]; then
		say "venv: would install $(basename "$REQS") into $VENV"
		PENDING=1
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

CHECK=0
PENDING=0
steps=()
for arg in "$@"; do
	case $arg in
	--check) CHECK=1 ;;
	apt | kafka | venv) steps+=("$arg") ;;
	*) die "usage: cluster/deps.sh [--check] [apt] [kafka] [venv]" ;;
	esac
done
[ ${#steps[@]} -gt 0 ] || steps=(apt kafka venv)

[ "$CHECK" = 1 ] || mkdir -p "$CACHE"
for step in "${steps[@]}"; do
	"install_$step"
done
if [ "$PENDING" = 1 ]; then
	say "work left (run cluster/deps.sh without --check)"
	exit 1
fi
say "ok"

#!/usr/bin/env bash
# cluster/deps.sh - install everything Mailstream needs to build, run and test.
#
#   cluster/deps.sh [--check] [apt] [kafka] [venv] [k8s] [mta]
#
# Run by `make deps`. Idempotent: every step checks before it acts, so a second
# run is a fast no-op. Five steps (all of them unless some are named):
#   apt    Debian packages (compilers, C libraries, redis-server and
#          redis-sentinel, postfix for smtp-sink, nsd, haproxy, dovecot, swaks,
#          kcat, Java and Maven; podman, runc and mmdebstrap for `make image`,
#          etcd-server for the chart's server-side test).
#   kafka  The Apache Kafka broker jars, fetched with Maven from
#          cluster/kafka/pom.xml into $MAILSTREAM_CACHE/kafka-<version>/lib
#          (outside the repository): the broker everything runs on, and a
#          second, test-only one for SCRAM (KAFKA_SCRAM_VERSION, below).
#   venv   The Python virtualenv for tests/integration at $MAILSTREAM_CACHE/venv.
#   k8s    helm and kube-apiserver, built from the Go module proxy into
#          $MAILSTREAM_CACHE/k8s (about 4 and 10 minutes once; Go must be in
#          PATH or /usr/local/go/bin), and the real CRDs of KEDA and the
#          Prometheus Operator, taken from their modules' zips on the same
#          proxy into $MAILSTREAM_CACHE/k8s/crds. Used by tests/integration/test_helm*.py.
#   mta    Exim, OpenSMTPD and Sendmail for the interoperability tests (issue 24),
#          which conflict with each other and with postfix as Debian packages
#          (each provides mail-transport-agent). So they are never installed:
#          `apt-get download` fetches their .deb files (plus the libraries they
#          need that the machine lacks, nss_wrapper, and m4 for sendmail.cf) into
#          $MAILSTREAM_CACHE/mta/debs and `dpkg-deb -x` unpacks them into
#          $MAILSTREAM_CACHE/mta/root. No maintainer script runs, no user or
#          service is created; tests/interop/mta.py runs them from there.
# --check changes nothing: it says what the steps would do and exits 1 if any
# of them has work left.
#
# System services. We use the programs of redis-server, redis-sentinel,
# postfix (smtp-sink), nsd, haproxy, dovecot and etcd-server, each started by
# cluster/mslocal.py or a test with a configuration of ours, on loopback ports
# and state directories of ours; we never need the machine's own instances,
# running or stopped. So a service that existed before this script ran is
# never stopped, restarted, disabled or reconfigured (issue 23). A service
# that appears because we install its package is kept from starting while we
# install (policy-rc.d) and left disabled at boot, with a line saying how to
# enable it.
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
# Test-only second broker (tests/integration/test_kafka_security.py; keep in
# sync with KAFKA_SCRAM_VERSION in cluster/mslocal.py): Debian 12's librdkafka
# 2.0.2 sends a SCRAM client-final nonce that Kafka >= 4.0 refuses (librdkafka
# PR #4895, fixed in 2.6.1) while Kafka 3.8.1 .. 3.9.x accept it, so SCRAM is
# tested end to end against this one. The same pom fetches it: Kafka 3.9 logs
# through SLF4J as 4.x does, so log4j2.xml serves both.
KAFKA_SCRAM_VERSION=3.9.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MAILSTREAM_CACHE:-$HOME/.cache/mailstream}
VENV=$CACHE/venv
REQS=$ROOT/tests/integration/requirements.txt
POM=$ROOT/cluster/kafka/pom.xml

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# step_done MARKER STAMP PRESENT WOULD: true (having said PRESENT) when the
# step's output is there, made from the inputs STAMP sums up; true (having
# said WOULD and noted the work) under --check otherwise; false: do the work.
step_done() {
	if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then
		say "$3"
		return 0
	fi
	if [ "$CHECK" = 1 ]; then
		say "$4"
		PENDING=1
		return 0
	fi
	return 1
}

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
	libunbound-dev libyaml-dev libjansson-dev publicsuffix
	redis-server redis-sentinel postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl
	kcat openssl curl nsd haproxy
	dovecot-lmtpd dovecot-imapd dovecot-pop3d
	maven
	podman runc mmdebstrap debian-archive-keyring etcd-server
	# Outbound TLS (issue 17): libcurl for MTA-STS policy fetches (lib/io/ms_https.c),
	# ldns-signzone to sign the DNSSEC test zone of test_outbound_dane.py, zlib for the
	# gzipped TLS-RPT reports (lib/mail/ms_tlsrpt.c).
	libcurl4-openssl-dev ldnsutils zlib1g-dev
	# Content checks (issue 18) and the inbound/sign benchmarks (issue 19): the milters the
	# tests start as private instances on loopback (never the system's service), the SPF
	# policy server Postfix uses in the inbound bench, and a caching resolver for it.
	rspamd opendkim opendkim-tools opendmarc postfix-policyd-spf-python unbound
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
	install_kafka_version "$KAFKA_VERSION"
	install_kafka_version "$KAFKA_SCRAM_VERSION"
}

# install_kafka_version VERSION: the jars of that Kafka into
# $CACHE/kafka-VERSION/lib.
install_kafka_version() {
	local version=$1 dir=$CACHE/kafka-$1 marker stamp
	marker=$dir/.complete
	stamp=$( { cat "$POM"; echo "$version"; } | sha256sum | cut -c1-16)
	step_done "$marker" "$stamp" "kafka $version: present in $dir" \
		"kafka $version: would fetch the jars into $dir/lib" && return
	command -v mvn >/dev/null 2>&1 || die "mvn not found"
	say "kafka $version: fetching jars with Maven into $dir/lib"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	# (sed: Maven's jansi prints colour resets even with -B.)
	mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$version" \
		dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory="$dir.tmp/lib" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
		|| die "maven could not fetch kafka $version"
	[ -f "$dir.tmp/lib/kafka_2.13-$version.jar" ] || die "kafka_2.13-$version.jar missing after fetch"
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
	echo "$stamp" > "$marker"
	say "kafka $version: $(ls "$dir/lib" | wc -l) jars"
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

# ---------------------------------------------------------------------------
# 4. helm and kube-apiserver for the chart's tests
# ---------------------------------------------------------------------------
# Keep in sync with tests/integration/k8s.py.
HELM_VERSION=4.3.2
K8S_VERSION=1.37.2
K8S_DIR=$CACHE/k8s
# The CRDs the chart's optional objects need (ScaledObject; ServiceMonitor,
# PrometheusRule), from the projects' own Go modules: KEDA's
# config/crd/bases and the Prometheus Operator's example/prometheus-operator-crd.
# Keep in sync with tests/integration/k8s.py. (KEDA 2.21 needs Go >= 1.27.)
KEDA_VERSION=2.20.2
PROMETHEUS_OPERATOR_VERSION=0.85.0
K8S_CRDS=(
	"github.com/kedacore/keda/v2@v$KEDA_VERSION config/crd/bases/keda.sh_scaledobjects.yaml"
	"github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
	"github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
)

install_k8s_crds() {
	local dir=$K8S_DIR/crds marker stamp entry module path src
	marker=$dir/.complete
	stamp=$(printf '%s\n' "${K8S_CRDS[@]}" | sha256sum | cut -c1-16)
	step_done "$marker" "$stamp" \
		"k8s: CRDs of KEDA $KEDA_VERSION and the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION present in $dir" \
		"k8s: would fetch the CRDs of KEDA $KEDA_VERSION and the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION into $dir" \
		&& return
	export PATH=$PATH:/usr/local/go/bin
	command -v go >/dev/null 2>&1 || die "go not found (needed to fetch the CRDs)"
	say "k8s: fetching the CRDs of KEDA $KEDA_VERSION and the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	for entry in "${K8S_CRDS[@]}"; do
		module=${entry%% *}
		path=${entry#* }
		# Outside any module: -json prints where the module was unpacked (Dir).
		src=$(cd "$dir.tmp" && go mod download -json "$module" \
			| sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
		[ -n "$src" ] && [ -f "$src/$path" ] || die "no $path in $module"
		cp "$src/$path" "$dir.tmp/"
	done
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
	echo "$stamp" > "$marker"
	say "k8s: $(ls "$dir" | tr '\n' ' ')in $dir"
}

install_k8s() {
	install_k8s_crds
	local helm=$K8S_DIR/helm-$HELM_VERSION apiserver=$K8S_DIR/kube-apiserver-$K8S_VERSION
	local gobin
	local stale=0
	# A binary without the release stamped in (an older recipe) is rebuilt.
	if [ -x "$apiserver" ] && ! "$apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$K8S_VERSION"; then
		stale=1
	fi
	if [ -x "$helm" ] && [ -x "$apiserver" ] && [ "$stale" = 0 ]; then
		say "k8s: helm $HELM_VERSION and kube-apiserver $K8S_VERSION present in $K8S_DIR"
		return
	fi
	if [ "$CHECK" = 1 ]; then
		[ -x "$helm" ] || say "k8s: would build helm $HELM_VERSION into $K8S_DIR"
		[ -x "$apiserver" ] && [ "$stale" = 0 ] || say "k8s: would build kube-apiserver $K8S_VERSION into $K8S_DIR"
		PENDING=1
		return
	fi
	export PATH=$PATH:/usr/local/go/bin
	command -v go >/dev/null 2>&1 || die "go not found (needed to build helm and kube-apiserver)"
	mkdir -p "$K8S_DIR"
	if [ ! -x "$helm" ]; then
		say "k8s: building helm $HELM_VERSION (a few minutes, once)"
		gobin=$(mktemp -d "$K8S_DIR/gobin.XXXXXX")
		GOBIN=$gobin go install "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION" || die "go install helm failed"
		mv "$gobin/helm" "$helm"
		rm -rf "$gobin"
	fi
	if [ ! -x "$apiserver" ] || [ "$stale" = 1 ]; then
		say "k8s: building kube-apiserver $K8S_VERSION (about 10 minutes, once)"
		K8S_VERSION=$K8S_VERSION bash "$ROOT/cluster/k8s/build-apiserver.sh" "$apiserver" \
			|| die "kube-apiserver build failed"
	fi
}

# ---------------------------------------------------------------------------
# 5. Private MTAs for the interoperability tests (unpacked, never installed)
# ---------------------------------------------------------------------------
MTA_DIR=$CACHE/mta
MTA_PACKAGES=(exim4-daemon-light opensmtpd sendmail-bin sendmail-cf libnss-wrapper m4)
MTA_BINARIES=(usr/sbin/exim4 usr/sbin/smtpd usr/libexec/sendmail/sendmail usr/bin/m4)

# The shared-library dependencies (lib*) of the packages that are not installed
# on this machine: unpacked next to the programs, found via LD_LIBRARY_PATH.
mta_missing_libs() {
	local p
	for p in $(apt-cache depends "${MTA_PACKAGES[@]}" 2>/dev/null \
		| sed -n 's/^ *|\{0,1\}Depends: \(lib[^ <>]*\)$/\1/p' | sort -u); do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
			|| printf '%s\n' "$p"
	done
}

install_mta() {
	local marker=$MTA_DIR/root/.complete stamp pkgs b libdir
	stamp=$(printf '%s\n' "${MTA_PACKAGES[@]}" | sha256sum | cut -c1-16)
	step_done "$marker" "$stamp" "mta: exim, opensmtpd, sendmail present in $MTA_DIR/root" \
		"mta: would download and unpack ${MTA_PACKAGES[*]} into $MTA_DIR/root" && return
	command -v apt-get >/dev/null 2>&1 || die "mta: needs apt-get (Debian)"
	pkgs=("${MTA_PACKAGES[@]}" $(mta_missing_libs))
	say "mta: downloading ${pkgs[*]}"
	rm -rf "$MTA_DIR/debs" "$MTA_DIR/root.tmp"
	mkdir -p "$MTA_DIR/debs" "$MTA_DIR/root.tmp"
	# apt-get download needs current package lists; update once if it fails.
	# (It runs as root here; apt warns that it could not drop to _apt.)
	if ! (cd "$MTA_DIR/debs" && apt-get download -qq "${pkgs[@]}" 2>/dev/null); then
		as_root apt-get update -qq || die "apt-get update failed"
		(cd "$MTA_DIR/debs" && apt-get download -qq "${pkgs[@]}" 2>&1 | grep -v unsandboxed) \
			|| die "mta: apt-get download ${pkgs[*]} failed"
	fi
	for b in "$MTA_DIR"/debs/*.deb; do
		dpkg-deb -x "$b" "$MTA_DIR/root.tmp" || die "mta: dpkg-deb -x $b failed"
	done
	libdir=$MTA_DIR/root.tmp/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
	for b in "${MTA_BINARIES[@]}"; do
		[ -x "$MTA_DIR/root.tmp/$b" ] || die "mta: $b missing after unpacking"
		if LD_LIBRARY_PATH=$libdir ldd "$MTA_DIR/root.tmp/$b" | grep -q 'not found'; then
			die "mta: $b: $(LD_LIBRARY_PATH=$libdir ldd "$MTA_DIR/root.tmp/$b" | grep 'not found' | tr -s '\t\n' ' ')"
		fi
	done
	rm -rf "$MTA_DIR/root"
	mv "$MTA_DIR/root.tmp" "$MTA_DIR/root"
	echo "$stamp" > "$marker"
	say "mta: $(cd "$MTA_DIR/debs" && ls | sed 's/_.*//' | tr '\n' ' ')unpacked into $MTA_DIR/root"
}

CHECK=0
PENDING=0
steps=()
for arg in "$@"; do
	case $arg in
	--check) CHECK=1 ;;
	apt | kafka | venv | k8s | mta) steps+=("$arg") ;;
	*) die "usage: cluster/deps.sh [--check] [apt] [kafka] [venv] [k8s] [mta]" ;;
	esac
done
[ ${#steps[@]} -gt 0 ] || steps=(apt kafka venv k8s mta)

[ "$CHECK" = 1 ] || mkdir -p "$CACHE"
for step in "${steps[@]}"; do
	"install_$step"
done
if [ "$PENDING" = 1 ]; then
	say "work left (run cluster/deps.sh without --check)"
	exit 1
fi
say "ok"

#!/usr/bin/env bash
# images/build.sh - build the Mailstream container image without a registry
# or a Docker engine (run by `make image`).
#
#   images/build.sh BUILD_DIR VERSION GIT_COMMIT
#
# 1. Base: mmdebstrap --variant=extract unpacks the Debian 12 packages of
#    the libraries the binaries load (from ldd; and their dependencies),
#    ca-certificates and publicsuffix; the extract hook then writes the CA bundle (no maintainer
#    script runs in this variant), /etc/passwd and /etc/group with the
#    non-root user 65532, and removes every shell and program of the packages,
#    so nothing but our binaries can be executed.  The tarball is cached in
#    $MAILSTREAM_CACHE/images by a hash of its inputs (IMAGE_BASE_REFRESH=1
#    rebuilds it, e.g. for security updates).
# 2. `podman import` makes it an image; `podman build` (images/Containerfile)
#    copies the stripped binaries in.
# 3. `podman save --format oci-archive` writes
#    BUILD_DIR/images/mailstream-VERSION-COMMIT.tar, which `podman load` and
#    `docker load` (Docker 25 or later) accept.
#
# podman keeps its storage under BUILD_DIR/images/podman (not the machine's)
# and reads images/containers.conf (runc, ulimits).
# Environment: MAILSTREAM_CACHE, IMAGE_MIRROR (an apt sources file or a URL;
# default: this machine's Debian sources), IMAGE_BASE_REFRESH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:?usage: build.sh BUILD_DIR VERSION GIT_COMMIT}
VERSION=${2:?}
COMMIT=${3:?}
CACHE=${MAILSTREAM_CACHE:-$HOME/.cache/mailstream}
OUT=$BUILD/images
PODMAN_DIR=$OUT/podman
NAME=localhost/mailstream
TAG=$VERSION-$COMMIT
ARCHIVE=$OUT/mailstream-$TAG.tar

# Besides the libraries the binaries link against (found below), the CA
# store ([tls] ca_file empty, Kafka SSL with the system's CAs) and the Public
# Suffix List ([policy] psl's default path).
EXTRA_PACKAGES=(ca-certificates publicsuffix)
SUITE=bookworm

say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

for t in mmdebstrap podman strip; do
	command -v "$t" >/dev/null 2>&1 || die "$t not found (make deps installs it)"
done
for b in frontend worker ctl authcheck; do
	[ -x "$BUILD/mailstream-$b" ] || die "$BUILD/mailstream-$b missing (make all)"
done
mkdir -p "$OUT" "$CACHE/images"

# The Debian packages of every shared library the binaries load (ldd, then
# dpkg -S; /lib and /usr/lib are the same directory on Debian 12, and dpkg
# may know a file by either), so a library the build starts to use reaches
# the image without a list to keep up to date.
runtime_packages() {
	local lib pkg
	for lib in $(for b in frontend worker ctl authcheck; do ldd "$BUILD/mailstream-$b"; done |
		awk '$3 ~ /^\// {print $3}' | sort -u); do
		pkg=
		for cand in "$lib" "$(readlink -f "$lib")" "/usr$lib" "/usr$(readlink -f "$lib")"; do
			pkg=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$pkg" ] && break
		done
		[ -n "$pkg" ] || die "no Debian package has $lib"
		echo "$pkg"
	done | sort -u
}
mapfile -t BASE_PACKAGES < <(runtime_packages)
[ "${#BASE_PACKAGES[@]}" -gt 0 ] || die "no runtime libraries found"
BASE_PACKAGES+=("${EXTRA_PACKAGES[@]}")

pm() {
	CONTAINERS_CONF=$ROOT/images/containers.conf podman --root "$PODMAN_DIR/root" \
		--runroot "$PODMAN_DIR/run" --storage-driver vfs "$@"
}

# The extract hook ($1 is the root file system).
HOOK='set -e
cd "$1"
mkdir -p etc/ssl/certs tmp home/nonroot
chmod 1777 tmp
find usr/share/ca-certificates -name "*.crt" | sort | xargs cat > etc/ssl/certs/ca-certificates.crt
printf "root:x:0:0:root:/root:/nonexistent\nnonroot:x:65532:65532:nonroot:/home/nonroot:/nonexistent\n" > etc/passwd
printf "root:x:0:\nnonroot:x:65532:\n" > etc/group
chown 65532:65532 home/nonroot
rm -rf bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin usr/libexec usr/share/doc \
	usr/share/man usr/share/info usr/share/lintian usr/share/locale usr/share/perl5 \
	usr/share/debconf usr/share/bash-completion usr/share/pixmaps usr/lib/x86_64-linux-gnu/perl-base \
	var/lib/apt var/lib/dpkg var/cache/apt var/log/*
mkdir -p usr/local/bin'

if [ -n "${IMAGE_MIRROR:-}" ]; then
	mirror=$IMAGE_MIRROR
elif [ -f /etc/apt/sources.list.d/debian.sources ]; then
	mirror=/etc/apt/sources.list.d/debian.sources
elif [ -s /etc/apt/sources.list ]; then
	mirror=/etc/apt/sources.list
else
	mirror=http://deb.debian.org/debian
fi
stamp=$( { echo "$SUITE ${BASE_PACKAGES[*]}"; echo "$HOOK"; } | sha256sum | cut -c1-16)
base_tar=$CACHE/images/base-$SUITE-$stamp.tar
if [ ! -s "$base_tar" ] || [ "${IMAGE_BASE_REFRESH:-0}" = 1 ]; then
	say "base: mmdebstrap $SUITE (${BASE_PACKAGES[*]})"
	mmdebstrap --quiet --variant=extract --format=tar \
		--include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
		--extract-hook="$HOOK" \
		"$SUITE" "$base_tar.tmp" "$mirror" </dev/null
	mv "$base_tar.tmp" "$base_tar"
else
	say "base: cached $base_tar"
fi

# The build context: the Containerfile, stripped binaries and the shipped rules.
ctx=$OUT/context
rm -rf "$ctx"
mkdir -p "$ctx/bin"
for b in frontend worker ctl authcheck; do
	strip -o "$ctx/bin/mailstream-$b" "$BUILD/mailstream-$b"
done
# The shipped rule files (docs/operations.md), for [delivery] shaping_file
# and bounce_rules_file: /usr/share/mailstream/ in the image.
mkdir -p "$ctx/share"
cp "$ROOT/etc/shaping.yaml" "$ROOT/etc/bounce-rules.yaml" "$ctx/share/"
cp "$ROOT/images/Containerfile" "$ctx/Containerfile"

say "podman import + build $NAME:$TAG"
pm import --quiet "$base_tar" "localhost/mailstream-base:$stamp" >/dev/null
pm build --quiet --pull=never --network=none --format oci \
	--build-arg "BASE=localhost/mailstream-base:$stamp" \
	--build-arg "VERSION=$VERSION" --build-arg "GIT_COMMIT=$COMMIT" \
	-t "$NAME:$TAG" -t "$NAME:$VERSION" -f "$ctx/Containerfile" "$ctx" >/dev/null
rm -f "$ARCHIVE.tmp"
pm save --quiet --format oci-archive -o "$ARCHIVE.tmp" "$NAME:$TAG"
mv "$ARCHIVE.tmp" "$ARCHIVE"
rm -rf "$ctx"
# Old archives of other commits are left for the operator; the newest is named
# by a stable link for the tests.
ln -sf "$(basename "$ARCHIVE")" "$OUT/mailstream.tar"
say "$ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)), image $NAME:$TAG"

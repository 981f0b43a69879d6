#!/bin/sh
# Installs the etcd-gateway binary from a release made by scripts/release.ts (docs/install.md).
#
#   curl -fsSL <base>/install.sh | sh -s -- [--version X] [--prefix /usr/local] [--base-url URL]
#     [--verify-key FILE]
#
# Picks the build for this machine (Linux x64/arm64, glibc or musl), downloads
# etcd-gateway-<version>-<target>.gz and SHA256SUMS from the base URL, verifies the checksum, and
# installs <prefix>/bin/etcd-gateway. With --verify-key it first checks SHA256SUMS.sig, the
# `ssh-keygen -Y sign` signature scripts/release.ts --sign-key makes, against that public key
# (or allowed_signers file). On any failure it exits 1 and installs nothing.
# POSIX sh (checked under dash and bash --posix); Linux only.
set -eu

# Placeholder: the GitHub repository that publishes the releases. Until it is filled in, pass
# --base-url or set ETCD_GATEWAY_BASE_URL.
REPO="OWNER/etcd-gateway"

me="etcd-gateway install"
version=""
prefix="/usr/local"
base_url="${ETCD_GATEWAY_BASE_URL:-}"
verify_key=""
# The namespace scripts/release.ts signs SHA256SUMS for.
sig_namespace="etcd-gateway-release"
tmp=""
staged=""

say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { say "error: $*"; exit 1; }

cleanup() {
  [ -n "$staged" ] && rm -f "$staged"
  [ -n "$tmp" ] && rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
# A signal ends the script through `exit`, so the EXIT trap above still cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

usage() {
  cat <<EOF
Usage: install.sh [--version X] [--prefix DIR] [--base-url URL] [--verify-key FILE]

  --version X     release to install, e.g. 0.1.0 (default: the VERSION file at the base URL)
  --prefix DIR    installs DIR/bin/etcd-gateway (default: /usr/local)
  --base-url URL  where the release assets are (default: \$ETCD_GATEWAY_BASE_URL, else
                  https://github.com/$REPO/releases/download/v<version>, or
                  .../releases/latest/download without --version)
  --verify-key FILE  require SHA256SUMS.sig to be a valid signature by this SSH public key
                  (a .pub file) or by a key in this allowed_signers file; needs ssh-keygen
EOF
}

# Flags take `--flag value` or `--flag=value`.
while [ $# -gt 0 ]; do
  case "$1" in
    --version|--prefix|--base-url|--verify-key)
      [ $# -ge 2 ] || die "$1 needs a value"
      opt="$1"; val="$2"; shift 2 ;;
    --version=*|--prefix=*|--base-url=*|--verify-key=*)
      opt="${1%%=*}"; val="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  [ -n "$val" ] || die "$opt needs a value"
  case "$opt" in
    --version) version="${val#v}" ;;
    --prefix) prefix="$val" ;;
    --base-url) base_url="$val" ;;
    --verify-key) verify_key="$val" ;;
  esac
done

# --- this machine -> release target

os=$(uname -s)
[ "$os" = "Linux" ] || die "unsupported OS: $os (etcd-gateway releases are Linux-only)"

machine=$(uname -m)
case "$machine" in
  x86_64|amd64) arch="x64" ;;
  aarch64|arm64) arch="arm64" ;;
  *) die "unsupported CPU architecture: $machine (releases exist for x86_64 and aarch64)" ;;
esac

# ldd names its libc; only when it says neither (or is missing) does the musl loader's presence
# decide, because glibc systems can carry /lib/ld-musl-* from an installed musl package.
libc="gnu"
ldd_says=$( (ldd --version 2>&1 || true) | tr 'A-Z' 'a-z')
case "$ldd_says" in
  *musl*) libc="musl" ;;
  *glibc*|*"gnu libc"*|*"gnu c library"*) libc="gnu" ;;
  *) for f in /lib/ld-musl-*; do if [ -e "$f" ]; then libc="musl"; fi; done ;;
esac

target="linux-$arch"
if [ "$libc" = "musl" ]; then
  [ "$arch" = "x64" ] || die "no musl build for linux-$arch (releases: linux-x64, linux-arm64 with glibc, linux-x64-musl)"
  target="linux-x64-musl"
fi

# --- tools

if command -v curl >/dev/null 2>&1; then
  fetch() { curl -fsSL --retry 2 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget -q -O "$2" "$1"; }
else
  die "neither curl nor wget is installed"
fi

if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1" | cut -d ' ' -f 1; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1" | cut -d ' ' -f 1; }
else
  die "neither sha256sum nor shasum is installed: cannot verify the download"
fi

command -v gzip >/dev/null 2>&1 || die "gzip is not installed"
if [ -n "$verify_key" ]; then
  [ -r "$verify_key" ] || die "--verify-key $verify_key: no such readable file"
  command -v ssh-keygen >/dev/null 2>&1 || die "--verify-key needs ssh-keygen (OpenSSH 8.2 or later) to check SHA256SUMS.sig"
fi

# --- download and verify

# Checks $tmp/SHA256SUMS against $base_url/SHA256SUMS.sig with ssh-keygen -Y verify. A public key
# file (`ssh-ed25519 AAAA... comment`) is trusted as the release key; otherwise the file is an
# allowed_signers file and the signer must be one of its principals.
verify_signature() {
  fetch "$base_url/SHA256SUMS.sig" "$tmp/SHA256SUMS.sig" || die "cannot download $base_url/SHA256SUMS.sig (--verify-key needs a signed release)"
  key_line=$(grep -v '^[[:space:]]*#' "$verify_key" | grep -v '^[[:space:]]*$' | head -n 1)
  case "$key_line" in
    ssh-*|ecdsa-*|sk-*)
      principal="$sig_namespace"
      printf '%s namespaces="%s" %s\n' "$principal" "$sig_namespace" "$key_line" > "$tmp/allowed_signers"
      signers="$tmp/allowed_signers" ;;
    *)
      signers="$verify_key"
      principal=$(ssh-keygen -Y find-principals -s "$tmp/SHA256SUMS.sig" -f "$signers" 2>/dev/null | head -n 1) \
        || die "SHA256SUMS.sig is not signed by a key in $verify_key: nothing installed" ;;
  esac
  [ -n "$principal" ] || die "SHA256SUMS.sig is not signed by a key in $verify_key: nothing installed"
  ssh-keygen -Y verify -f "$signers" -I "$principal" -n "$sig_namespace" -s "$tmp/SHA256SUMS.sig" < "$tmp/SHA256SUMS" >/dev/null 2>&1 \
    || die "bad signature: SHA256SUMS.sig does not verify SHA256SUMS with $verify_key: nothing installed"
  say "SHA256SUMS signature verified ($principal, $verify_key)"
}

if [ -z "$base_url" ]; then
  if [ -n "$version" ]; then
    base_url="https://github.com/$REPO/releases/download/v$version"
  else
    base_url="https://github.com/$REPO/releases/latest/download"
  fi
  case "$REPO" in
    OWNER/*) die "this install.sh has no release location filled in (REPO=$REPO): pass --base-url URL or set ETCD_GATEWAY_BASE_URL" ;;
  esac
fi
base_url="${base_url%/}"

tmp=$(mktemp -d) || die "cannot create a temporary directory (set TMPDIR to a writable one)"

if [ -z "$version" ]; then
  fetch "$base_url/VERSION" "$tmp/VERSION" || die "cannot download $base_url/VERSION (pass --version X)"
  version=$(head -n 1 "$tmp/VERSION" | tr -d ' \t\r')
  version="${version#v}"
fi
# The version becomes part of a file name and a URL: letters, digits, dots, dashes and pluses only.
case "$version" in
  ''|*[!0-9A-Za-z.+-]*) die "invalid version: \"$version\"" ;;
esac

asset="etcd-gateway-$version-$target.gz"
say "installing etcd-gateway $version ($target) from $base_url"
fetch "$base_url/SHA256SUMS" "$tmp/SHA256SUMS" || die "cannot download $base_url/SHA256SUMS"
[ -z "$verify_key" ] || verify_signature
fetch "$base_url/$asset" "$tmp/$asset" || die "cannot download $base_url/$asset"

# sha256sum lines are `<hex>  <name>`, or `<hex> *<name>` when written in binary mode.
expected=$(awk -v f="$asset" '$2 == f || $2 == "*" f { print tolower($1); exit }' "$tmp/SHA256SUMS")
[ -n "$expected" ] || die "SHA256SUMS has no entry for $asset: refusing to install an unverified binary"
actual=$(sha256 "$tmp/$asset" | tr 'A-F' 'a-f')
[ "$actual" = "$expected" ] || die "checksum mismatch for $asset: expected $expected, got $actual; nothing installed"

# --- install: decompress into a staged file beside the destination (the temp dir never holds the
# ~110 MB binary), check that it runs, then rename it over any old binary: a rename is atomic and
# leaves a running etcd-gateway untouched, where writing over it would fail with "text file busy".

bindir="${prefix%/}/bin"
mkdir -p "$bindir" 2>/dev/null || die "cannot create $bindir (run as root, e.g. '| sudo sh -s -- ...', or use --prefix \$HOME/.local)"
staged="$bindir/.etcd-gateway.install.$$"
touch "$staged" 2>/dev/null || die "cannot write to $bindir (run as root, or use --prefix \$HOME/.local)"
gzip -dc "$tmp/$asset" > "$staged" || die "cannot decompress $asset into $bindir"
chmod 0755 "$staged"
reported=$("$staged" --version 2>&1) || die "the downloaded binary does not run here: $reported"
[ "$reported" = "$version" ] || die "the downloaded binary reports version \"$reported\", expected \"$version\""
mv -f "$staged" "$bindir/etcd-gateway" || die "cannot move the binary into $bindir/etcd-gateway"
staged=""

installed=$("$bindir/etcd-gateway" --version) || die "$bindir/etcd-gateway --version failed"
printf 'installed etcd-gateway %s to %s\n' "$installed" "$bindir/etcd-gateway"
case ":${PATH:-}:" in
  *":$bindir:"*) ;;
  *) say "note: $bindir is not on PATH" ;;
esac

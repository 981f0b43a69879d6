#!/usr/bin/env bash
# Installs what the test suite talks to, from Debian's packages, when it is missing:
# etcd-server and etcd-client (a real 3-member cluster and etcdctl), python3 (a SYN-blackhole helper),
# dnsmasq-base (SRV discovery tests; the -base package is the binary without a system service),
# iproute2 (ss and ip: socket inspection, network namespaces), procps (pgrep), util-linux (unshare, nsenter),
# openssl (test certificates), curl (the installer test), systemd (systemd-analyze verify of the shipped unit),
# musl-tools and gcc (a musl program that checks how src/libc.ts finds the C library on musl),
# prometheus (for promtool: /metrics is checked with `promtool check metrics`, the alert rules with
# `promtool check rules` and `promtool test rules`), lintian (checks the .deb package), rpm (builds the
# .rpm), qemu-user-static and libc6-arm64-cross (run the linux-arm64 binary under qemu-aarch64-static),
# bash-completion, zsh and fish (the completion scripts are loaded by each shell), man-db (man -l
# renders the man page), openssh-client (ssh-keygen signs and verifies release checksums in the
# installer tests) and binutils (readelf: the .deb's libc6 dependency).
# Safe to run repeatedly; prints nothing when everything is present.
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v python3 >/dev/null || missing+=(python3)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
command -v ss >/dev/null && command -v ip >/dev/null || missing+=(iproute2)
command -v pgrep >/dev/null || missing+=(procps)
command -v unshare >/dev/null && command -v nsenter >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v gcc >/dev/null || missing+=(gcc)
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v lintian >/dev/null || missing+=(lintian)
command -v rpmbuild >/dev/null || missing+=(rpm)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || missing+=(libc6-arm64-cross)
[ -e /usr/share/bash-completion/bash_completion ] || missing+=(bash-completion)
command -v zsh >/dev/null || missing+=(zsh)
command -v fish >/dev/null || missing+=(fish)
command -v man >/dev/null || missing+=(man-db)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v readelf >/dev/null || missing+=(binutils)
need_promtool=0
command -v promtool >/dev/null || need_promtool=1
[ ${#missing[@]} -eq 0 ] && [ "$need_promtool" -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "ensure-deps: need root or sudo to install: ${missing[*]} $([ "$need_promtool" -eq 1 ] && echo prometheus)" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-deps: installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get install -y -qq "${missing[@]}" >&2
fi
if [ "$need_promtool" -eq 1 ]; then
  # Only promtool is wanted: without the recommended node exporter, and the Prometheus server the
  # package starts is stopped and kept from starting at boot (without systemd nothing was started).
  echo "ensure-deps: installing Debian package: prometheus (for promtool)" >&2
  $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
  if command -v systemctl >/dev/null; then $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

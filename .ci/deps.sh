#!/usr/bin/env bash
# Installs the system packages the tests and the demo use on Debian 12.
# Idempotent: does nothing when everything is present.
set -euo pipefail
# prometheus: for promtool, which checks and unit-tests the fleet rules.
# rpmlint, cpio and systemd (systemd-analyze verify): make rpm / rpmlint
# check the agent's package and unit; zsh and groff-base: the completion and
# man page tests.
# libc6-dev: go test -race and every cgo build (gcc only Recommends it, and
# --no-install-recommends leaves it out; a fresh root showed it).
# file: rpmbuild classifies the payload with it (Debian's rpm does not depend
# on it; the fresh root's make rpm failed with "file: not found").
# man-db: make rpm's systemd-analyze verify runs man for the unit's
# Documentation=man:klp-agent(8) (a fresh root's make demo failed on it).
# xz-utils: TestXZDictGuardPassesRealStreams checks the payload's xz guard
# on real xz output (minbase has no xz; a fresh root's make test failed).
# prometheus-alertmanager: the fleet test (e2e/fleet_test.go) runs the real
# Alertmanager between Prometheus and the guard's webhook.
pkgs=(nginx-light rpm file man-db gcc libc6-dev make git ca-certificates curl python3 prometheus prometheus-alertmanager busybox-static rpmlint cpio systemd zsh groff-base xz-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "deps: need root to install: ${missing[*]} (run as root, or with sudo)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's nginx package starts a system nginx on port 80, and prometheus's a
# server on 9090; the tests run their own nginx on loopback and need
# neither (nor alertmanager's on 9093).
if command -v go >/dev/null; then
  :
elif [[ -x /usr/local/go/bin/go ]]; then
  :
else
  echo "deps: Go 1.26 or newer is required (https://go.dev/dl, or /usr/local/go)" >&2
  exit 1
fi

#!/usr/bin/env bash
# The README's first command (`sudo make demo`): publish a signed manifest
# of livepatch RPMs, serve it with a real nginx on loopback, and show what
# hosts in different rollout tiers choose, and that a tampered manifest is
# refused. Prints a short summary with timings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin="$repo/bin/klp-agent"
[[ -x $bin ]] || { echo "demo: $bin missing: run 'make build'" >&2; exit 1; }
work=$(mktemp -d /tmp/klp-demo.XXXXXX)
nginx_pid=
cleanup() { [[ -n $nginx_pid ]] && kill "$nginx_pid" 2>/dev/null || true; }
trap cleanup EXIT
t0=$EPOCHREALTIME
step() { printf '\n== %s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2fs", b - a }'; }

krel=6.1.0-28-amd64 # the demo's hosts run this kernel (written into their fake /proc)
mkdir -p "$work"/{www/rpms,keys,build}

step "1. a release key (ed25519), as a publisher makes it once"
"$bin" manifest keygen --out "$work/keys/release1"

step "2. three cumulative livepatch RPMs for $krel, built with rpmbuild"
for level in 1 2 3; do
  mod=klp_cmdline_$level
  mkdir -p "$work/build/$level"
  printf 'placeholder module %s\n' "$mod" > "$work/build/$level/$mod.ko"
  cat > "$work/build/$level/klp.spec" <<SPEC
Name: klp-cmdline
Version: $level
Release: 1
Summary: demo cumulative livepatch level $level
License: GPL-2.0
BuildArch: noarch
Provides: klp-livepatch($krel) = $level
Provides: klp-module($mod) = $level
%global debug_package %{nil}
%define __os_install_post %{nil}
%define _binary_payload w9.gzdio
%description
Demo livepatch.
%install
mkdir -p %{buildroot}/usr/lib/klp-agent/livepatches/$krel
install -m 0644 $work/build/$level/$mod.ko %{buildroot}/usr/lib/klp-agent/livepatches/$krel/$mod.ko
%files
/usr/lib/klp-agent/livepatches/$krel/$mod.ko
SPEC
  rpmbuild -bb --quiet --define "_topdir $work/build/$level/top" --define "_rpmdir $work/www/rpms" \
    --define "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm" "$work/build/$level/klp.spec"
done
ls -l "$work/www/rpms"

step "3. the manifest: level 1 for everyone, 2 ramping over a day, 3 to the canary tier only"
start=$(date -u -d '-14 hours' +%Y-%m-%dT%H:%M:%SZ)
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-1-1.noarch.rpm" --url rpms/klp-cmdline-1-1.noarch.rpm
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-2-1.noarch.rpm" --url rpms/klp-cmdline-2-1.noarch.rpm \
  --tier canary --start "$start" --start-percent 10 --duration 24h
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-3-1.noarch.rpm" --url rpms/klp-cmdline-3-1.noarch.rpm \
  --tier canary --start "$start"
"$bin" manifest sign --in "$work/manifest.yaml" --key "$work/keys/release1.key" --out "$work/www/manifest.json"
"$bin" manifest lint "$work/www/manifest.json"

step "4. nginx serves it on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
$( [[ $(id -u) == 0 ]] && echo "user root;" )
daemon off; worker_processes 1; pid $work/nginx/pid; error_log stderr warn;
events { worker_connections 64; }
http { access_log off; default_type application/octet-stream;
  client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p; fastcgi_temp_path $work/nginx/f;
  uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e stderr &
nginx_pid=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/manifest.json" 2>/dev/null && break; sleep 0.05; done
url="http://127.0.0.1:$port/manifest.json"
echo "manifest at $url"
printf 'first GET: %s; conditional GET with its ETag: %s\n' \
  "$(curl -s -o /dev/null -w '%{http_code}' "$url")" \
  "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $(curl -sI "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')" "$url")"

host() { # host NAME TIER -> config path for a simulated host
  local d="$work/hosts/$1"
  mkdir -p "$d/root/proc/sys/kernel" "$d/root/etc" "$d/state" "$d/keys"
  echo "$krel" > "$d/root/proc/sys/kernel/osrelease"
  printf '%s\n' "$(echo "$1" | sha256sum | cut -c1-32)" > "$d/root/etc/machine-id"
  cp "$work/keys/release1.pub" "$d/keys/"
  cat > "$d/config.yaml" <<CFG
manifest:
  url: $url
trust:
  keys_dir: $d/keys
host:
  tier: "$2"
paths:
  root: $d/root
  state_dir: $d/state
CFG
  echo "$d/config.yaml"
}

step "5. what each host wants now (klp-agent explain)"
for h in canary-1:canary web-17: db-3: web-4: batch-9:; do
  name=${h%%:*} tier=${h#*:}
  echo "--- host $name (tier '${tier}')"
  "$bin" explain --config "$(host "$name" "$tier")"
done

step "6. the same web host a day later, once the ramp is complete"
"$bin" explain --config "$work/hosts/web-17/config.yaml" --at "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)" | sed -n '3p'

step "7. a tampered manifest is refused (one byte of the signed payload changed)"
python3 - "$work/www/manifest.json" <<'PY'
import base64, json, sys
p = sys.argv[1]; e = json.load(open(p))
body = base64.b64decode(e["payload"]).replace(b"level: 3", b"level: 4", 1)
e["payload"] = base64.b64encode(body).decode()
json.dump(e, open(p + ".tmp", "w"))
PY
mv "$work/www/manifest.json.tmp" "$work/www/manifest.json"
if "$bin" explain --config "$work/hosts/web-17/config.yaml"; then
  echo "demo: FAIL: tampered manifest accepted" >&2; exit 1
fi

printf '\n== summary\nsigned manifest published and served by nginx; canary host wants level 3, other hosts level 1 or 2 by their stable bucket, level 2 for all after the ramp; tampered manifest refused.\ndemo files in %s; total %s\n' "$work" "$(elapsed "$t0")"
echo "The real-kernel part (qemu guest loading these levels) arrives with the klp harness (issue 3)."

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

mkdir -p "$work"/{www/rpms,keys}

step "1. a release key (ed25519), as a publisher makes it once"
"$bin" manifest keygen --out "$work/keys/release1"

step "2. cumulative livepatch RPMs for Debian's current kernel: our test modules built against its headers, packaged with rpmbuild"
"$repo/e2e/setup.sh"
"$repo/e2e/build-rpms.sh" "$work/kernel-rpms" 2>&1 | tail -n 1
krel=$(awk -F'\t' '$2 == "klp-cmdline" && $4 == 1 && $1 !~ /otherkrel/ { print $5 }' "$work/kernel-rpms/index.tsv")
for level in 1 2 3; do cp "$work/kernel-rpms/klp-cmdline-$level-1.x86_64.rpm" "$work/www/rpms/"; done
ls -l "$work/www/rpms"
echo "the demo's hosts run $krel"

step "3. the manifest: level 1 for everyone, 2 ramping over a day, 3 to the canary tier only"
start=$(date -u -d '-14 hours' +%Y-%m-%dT%H:%M:%SZ)
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-1-1.x86_64.rpm" --url rpms/klp-cmdline-1-1.x86_64.rpm
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-2-1.x86_64.rpm" --url rpms/klp-cmdline-2-1.x86_64.rpm \
  --tier canary --start "$start" --start-percent 10 --duration 24h
"$bin" manifest add --manifest "$work/manifest.yaml" --rpm "$work/www/rpms/klp-cmdline-3-1.x86_64.rpm" --url rpms/klp-cmdline-3-1.x86_64.rpm \
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

t_kernel=$EPOCHREALTIME
step "8. the real kernel: $krel in qemu; klp-agent applies the published RPMs, pinned to the manifest's sha256 and size"
# The pins come from the signed manifest (good copy kept before step 7).
pins=$(awk '/sha256:|size:|level:/ { printf "%s ", $2 } /size:/ { print "" }' "$work/manifest.yaml")
echo "$pins" | awk 'NF { printf "level %s: sha256 %.16s... size %s\n", $1, $2, $3 }'
echo "$pins" > "$work/www/rpms/pins"
files=()
for b in rpm rpmdb; do
  files+=(-f "/usr/bin/$b:/usr/local/bin/$b")
  while read -r lib; do files+=(-f "$(readlink -f "$lib"):$lib"); done < <(ldd "/usr/bin/$b" | grep -o '/[^ ]* (0x' | cut -d' ' -f1)
done
files+=(-f "/usr/bin/rpmdb:/usr/bin/rpmdb" -f /usr/lib/rpm:/usr/lib/rpm -f "$bin:/usr/bin/klp-agent" -f "$work/www/rpms:/rpms")
"$repo/e2e/guest/mkinitramfs.sh" -o "$work/demo-initrd.gz" -s "$repo/e2e/guest/scenarios/demo.sh" "${files[@]}"
if ! "$repo/e2e/guest/run-qemu.sh" -i "$work/demo-initrd.gz" -l "$work/demo-serial.log" -q -t 240; then
  tr -d '\r' <"$work/demo-serial.log" | tail -n 40
  echo "demo: FAIL: the guest run failed (log $work/demo-serial.log)" >&2; exit 1
fi
tr -d '\r' <"$work/demo-serial.log" | grep -a -E '^(DEMO: |KLP-E2E: [a-z0-9-]+ PASS)' | sed -e 's/^KLP-E2E: \([a-z0-9-]*\) PASS /  \1: /'

printf '\n== summary\n'
printf 'trust chain: signed manifest of real livepatch RPMs served by nginx; canary host wants level 3, others 1 or 2 by stable bucket, 2 for all after the ramp; tampered manifest refused (%s)\n' "$(awk -v a="$t0" -v b="$t_kernel" 'BEGIN { printf "%.1fs", b - a }')"
printf 'real kernel: levels 1 -> 2 -> 3 -> 2 -> none applied to %s by klp-agent, each visible in /proc/cmdline (%s)\n' "$krel" "$(elapsed "$t_kernel")"
printf 'total %s; files in %s\n' "$(elapsed "$t0")" "$work"

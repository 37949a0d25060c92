#!/usr/bin/env bash
# Load benchmark for `weir serve` (issue 5), in one run on one machine:
#   (1) the upstream directly, (2) weir -> upstream with limits and every header on,
#   (3) nginx with limit_req -> the same upstream, and, for reference,
#   (4) weir as in (2) but telling the upstream nothing of the caller's identity
#       (`[server.identity_headers]` all ""): what the four identity fields cost the upstream;
#   (5) nginx doing the same wire work as (2): three limit_req zones (per IP, per organisation,
#       per user, the identity looked up from the key with `map`, 401 without it), the same
#       eight fields to the upstream and the same six fields to the client (the rate-limit
#       values fixed, as nginx has no counters to report): what weir's contract costs when
#       nginx is asked to put the same bytes on the wire;
#   (6) the upstream directly, sent the eight fields weir adds to every request it forwards
#       (the same names and values, set by wrk): what those fields cost the upstream;
#   (7) nginx as in (3), bare limit_req, but sending the upstream the eight fields weir adds
#       (`proxy_set_header`, the identity as fixed values): what the part of the contract that
#       is for the upstream costs nginx, with nothing for the client. After the goal's pairs,
#       weir is measured against (7) in as many alternating pairs.
# The goal (issue 5) is judged on (2) against (3), weir's defaults against bare limit_req.
# The upstream is nginx returning a small JSON body. Needs: nginx, wrk (Debian packages
# nginx-light or nginx, and wrk).
# Usage: bench/gateway-load.sh [seconds] [connections] [rounds] [pairs] [pair-seconds]
# Each round measures the seven setups back to back; the table shows every round and the
# medians, and the ratio is of the medians (one round on a small shared machine is noisy).
# Then the goal's two setups, (2) and (3), are measured in `pairs` short pairs (default 20 of
# 3 s each), back to back in alternating order (weir first, then nginx first): a shared
# machine's speed drifts by more than the difference being measured over a round of ten-second
# runs, and two runs a few seconds apart see the same machine. The goal's figure is the
# median of the pairs' ratios, shown with its quartiles, how many pairs reached 1.0, and the
# exact distribution-free ~95% interval of that median with what it says of the goal (above
# 1.0x, below it, or not distinguishable from it): bench/pairs.py, which also pools the pairs
# of several saved runs (`bench/pairs.py pool OUTPUT...`).
# Placement: both run with their defaults, the operating system placing the workers. To see
# what pinning does, WEIR_AFFINITY=auto pins weir's workers (`server.cpu_affinity`), and
# NGINX_AFFINITY=auto pins nginx's (`worker_cpu_affinity auto`).
# Beside throughput, each row has the CPU time (user + system, from /proc) spent per request
# by the proxy, by the upstream, by the client (wrk) and by the whole machine, and the share
# of the machine's CPU time left idle (the pairs report it too): throughput is the busy
# share of the CPUs divided by the machine's CPU per request, and both move less than
# throughput from run to run. bench/idle-balance.py tells where idle time comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
ROUNDS="${3:-3}"
PAIRS="${4:-20}"
PAIR_SECS="${5:-3}"
WEIR_AFFINITY="${WEIR_AFFINITY:-none}"
NGINX_AFFINITY="${NGINX_AFFINITY:-none}"
# nginx has no "off": its default is the directive left out.
NGINX_PLACEMENT=""; [ "$NGINX_AFFINITY" = none ] || NGINX_PLACEMENT="worker_cpu_affinity $NGINX_AFFINITY;"
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)"; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }
cargo build --release -q -p weir
WORK="$(mktemp -d)"
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); WEIR=$(free_port); ADMIN=$(free_port)
LEAN=$(free_port); LEAN_ADMIN=$(free_port); NGF=$(free_port); NGU=$(free_port)

mkdir -p "$WORK/up" "$WORK/ng" "$WORK/ngf" "$WORK/ngu"
cat > "$WORK/up/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/up.pid; error_log $WORK/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"ok":true,"from":"upstream"}'; } } }
CONF
# (5) and (7): the eight fields weir adds to a forwarded request, as nginx directives, the
# identity (key id, user, organisation, plan) given as $1..$4. The values are the ones weir
# sends, in the same shapes (nginx's $request_id is 32 hex digits, weir's a UUID; the trace id
# is the request id, the parent id fixed).
upstream_fields() {
  cat <<FIELDS
proxy_set_header X-Weir-Key-Id $1; proxy_set_header X-Weir-User $2;
      proxy_set_header X-Weir-Organisation $3; proxy_set_header X-Weir-Plan $4;
      proxy_set_header X-Request-Id \$request_id;
      proxy_set_header traceparent 00-\$request_id-22ee6fdb8442e38d-01;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
FIELDS
}
RESET=$(( $(date +%s) + 60 ))
cat > "$WORK/ngf/nginx.conf" <<CONF
daemon off; worker_processes auto; $NGINX_PLACEMENT pid $WORK/ngf.pid; error_log $WORK/ngf/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  map \$http_authorization \$key_id { "Bearer bench-key" bench; default ""; }
  map \$key_id \$key_user { bench bench-user; default ""; }
  map \$key_id \$key_org { bench bench-org; default ""; }
  map \$key_id \$key_plan { bench bench; default ""; }
  limit_req_zone \$key_org zone=perorg:10m rate=1000000r/s;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  limit_req_zone \$key_user zone=peruser:10m rate=1000000r/s;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGF;
    location / {
      if (\$key_id = "") { return 401; }
      limit_req zone=perorg burst=1000000 nodelay; limit_req zone=perip burst=1000000 nodelay;
      limit_req zone=peruser burst=1000000 nodelay; limit_req_status 429;
      $(upstream_fields '$key_id' '$key_user' '$key_org' '$key_plan')
      add_header X-Request-Id \$request_id always;
      add_header X-RateLimit-Limit 100000000 always;
      add_header X-RateLimit-Remaining 99999999 always;
      add_header X-RateLimit-Reset $RESET always;
      add_header RateLimit-Policy '"org-minute";q=100000000;w=60, "ip-10s";q=100000000;w=10, "user-minute";q=100000000;w=60' always;
      add_header RateLimit '"org-minute";r=99999999;t=1, "ip-10s";r=99999999;t=1, "user-minute";r=99999999;t=1' always;
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
# (3), and (7) with the eight fields: nginx with bare limit_req (per IP), in directory $1 on
# port $2, with the directives $3 added to its location.
bare_limit_req() {
  cat > "$WORK/$1/nginx.conf" <<CONF
daemon off; worker_processes auto; $NGINX_PLACEMENT pid $WORK/$1.pid; error_log $WORK/$1/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$2;
    location / { limit_req zone=perip burst=1000000 nodelay; limit_req_status 429;
      $3
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}
bare_limit_req ng "$NG" ""
bare_limit_req ngu "$NGU" "$(upstream_fields bench bench-user bench-org bench)"
cat > "$WORK/weir.toml" <<CONF
[server]
listen = "127.0.0.1:$WEIR"
admin_listen = "127.0.0.1:$ADMIN"
ratelimit_fields = true
cpu_affinity = "$WEIR_AFFINITY"
[upstreams.up]
url = "http://127.0.0.1:$UP"
[[routes]]
name = "api"
prefix = "/v1"
upstream = "up"
[[limits]]
name = "org-minute"
scope = ["organisation"]
window = "60s"
per_plan = { bench = 100000000 }
[[limits]]
name = "ip-10s"
scope = ["ip"]
window = "10s"
count = 100000000
[[limits]]
name = "user-minute"
scope = ["user"]
window = "60s"
count = 100000000
[[keys]]
id = "bench"
key = "bench-key"
user = "bench-user"
organisation = "bench-org"
plan = "bench"
CONF
sed -e "s/127.0.0.1:$WEIR\"/127.0.0.1:$LEAN\"/; s/127.0.0.1:$ADMIN\"/127.0.0.1:$LEAN_ADMIN\"/" \
  -e 's/^\[upstreams.up\]$/[server.identity_headers]\nkey_id = ""\nuser = ""\norganisation = ""\nplan = ""\n[upstreams.up]/' \
  "$WORK/weir.toml" > "$WORK/weir-lean.toml"
# (6): the fields weir adds to a forwarded request, as the upstream receives them.
cat > "$WORK/fields.lua" <<'LUA'
wrk.headers["x-weir-key-id"] = "bench"
wrk.headers["x-weir-user"] = "bench-user"
wrk.headers["x-weir-organisation"] = "bench-org"
wrk.headers["x-weir-plan"] = "bench"
wrk.headers["x-request-id"] = "08c0be4b-9b89-4924-8cab-08cc47265f50"
wrk.headers["traceparent"] = "00-5131d679fc70fb1f9880d26213323fb3-9485a21b91bece60-01"
wrk.headers["x-forwarded-for"] = "127.0.0.1"
wrk.headers["x-forwarded-proto"] = "http"
LUA
nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" & echo $! > "$WORK/up-master.pid"
nginx -c "$WORK/ng/nginx.conf" -p "$WORK/ng" & echo $! > "$WORK/ng-master.pid"
nginx -c "$WORK/ngf/nginx.conf" -p "$WORK/ngf" & echo $! > "$WORK/ngf-master.pid"
nginx -c "$WORK/ngu/nginx.conf" -p "$WORK/ngu" & echo $! > "$WORK/ngu-master.pid"
WEIR_LOG=warn ./target/release/weir serve --config "$WORK/weir.toml" > "$WORK/weir.log" 2>&1 & echo $! > "$WORK/weir.pid"
WEIR_LOG=warn ./target/release/weir serve --config "$WORK/weir-lean.toml" > "$WORK/weir-lean.log" 2>&1 & echo $! > "$WORK/weir-lean.pid"
for p in $UP $NG $WEIR $LEAN $NGF $NGU; do for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done; done

# CPU time (clock ticks, user + system) of processes and their children, every thread.
ticks() {
  local all=() p
  for p in "$@"; do all+=("$p" $(pgrep -P "$p" || true)); done
  for p in "${all[@]}"; do cat /proc/"$p"/task/*/stat 2>/dev/null; done |
    awk '{sub(/^.*\) /, ""); t += $12 + $13} END {print t + 0}'
}
# Clock ticks of the whole machine: busy (everything but idle and iowait), then all of them.
machine() { awk '/^cpu / {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat; }
# The share (%) of the machine's CPU time left idle between two readings of `machine`
# (busy0 all0 busy1 all1).
idle_pct() { python3 -c "print(f'{100 * (1 - ($3 - $1) / max($4 - $2, 1)):.1f}')"; }
HZ=$(getconf CLK_TCK)
per_req() { python3 -c "print(f'{$1 / $HZ / $2 * 1e6:.1f}')"; }
run() { # name url extra-header proxy-pid (empty for the upstream itself) [wrk script]
  local p0 u0 m0 t0 out p1 u1 m1 t1 script=()
  [ -n "${5:-}" ] && script=(-s "$5")
  p0=$(ticks $4); u0=$(ticks "$(cat "$WORK/up-master.pid")"); read -r m0 t0 < <(machine)
  # `times` after wrk: the CPU time of the subshell's children, i.e. of wrk.
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" -H "$3" "$2"; times)
  p1=$(ticks $4); u1=$(ticks "$(cat "$WORK/up-master.pid")"); read -r m1 t1 < <(machine)
  local rps p50 p99 non2xx n
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  local proxy="-"; [ -n "$4" ] && proxy=$(per_req $((p1 - p0)) "$n")
  local client
  client=$(tail -n1 <<<"$out" | awk -v n="$n" '{t = 0; for (i = 1; i <= 2; i++) {split($i, a, /[ms]/); t += a[1] * 60 + a[2]} printf "%.1f", t / n * 1e6}')
  local idle
  idle=$(idle_pct "$m0" "$t0" "$m1" "$t1")
  echo "$1|$rps|$p50|$p99|$non2xx|$proxy|$(per_req $((u1 - u0)) "$n")|$client|$(per_req $((m1 - m0)) "$n")|$idle"
}
# Warm-up, then ROUNDS rounds of the seven measurements back to back. The order puts a proxy
# before each of the goal's two setups, and swaps them from round to round: a run inherits how
# the scheduler has placed the upstream and the proxies in the run before it, and both proxies
# idle more after the upstream alone (session 21, 8 runs each: weir idled 3.55% after the
# upstream alone against 2.45% after nginx, nginx 3.9% against 1.95% after weir), so neither
# may always come right after the upstream alone.
wrk -t1 -c8 -d2s -H 'Authorization: Bearer bench-key' "http://127.0.0.1:$WEIR/v1/x" >/dev/null
wrk -t1 -c8 -d2s -H 'Authorization: Bearer bench-key' "http://127.0.0.1:$LEAN/v1/x" >/dev/null
rows=()
# One measured run in round $1 (the rest as `run` takes them), added to the table.
row() { local r=$1; shift; rows+=("$(run "$@")|$r"); }
for r in $(seq "$ROUNDS"); do
  row "$r" "upstream directly" "http://127.0.0.1:$UP/v1/x" "X-Bench: 1" ""
  row "$r" "upstream directly, sent weir's eight fields" "http://127.0.0.1:$UP/v1/x" "X-Bench: 1" "" "$WORK/fields.lua"
  row "$r" "nginx, same limits and fields -> upstream" "http://127.0.0.1:$NGF/v1/x" "Authorization: Bearer bench-key" "$(cat "$WORK/ngf-master.pid")"
  row "$r" "weir, no identity fields -> upstream" "http://127.0.0.1:$LEAN/v1/x" "Authorization: Bearer bench-key" "$(cat "$WORK/weir-lean.pid")"
  goal=(
    "weir -> upstream|http://127.0.0.1:$WEIR/v1/x|Authorization: Bearer bench-key|$(cat "$WORK/weir.pid")"
    "nginx limit_req -> upstream|http://127.0.0.1:$NG/v1/x|X-Bench: 1|$(cat "$WORK/ng-master.pid")"
  )
  (( r % 2 )) || goal=("${goal[1]}" "${goal[0]}")
  for g in "${goal[@]}"; do IFS='|' read -r n u h pid <<<"$g"; row "$r" "$n" "$u" "$h" "$pid"; done
  row "$r" "nginx limit_req, sending weir's eight fields -> upstream" "http://127.0.0.1:$NGU/v1/x" "X-Bench: 1" "$(cat "$WORK/ngu-master.pid")"
done
# The alternating pairs: weir's and nginx's requests/s, each pair measured back to back.
# Prints requests/s and the machine's idle share (%) during the run.
rps_of() {
  local m0 t0 m1 t1 rps
  read -r m0 t0 < <(machine)
  rps=$(wrk -t2 -c"$CONNS" -d"${PAIR_SECS}s" -H "$2" "$1" | awk '/^Requests\/sec/ {print $2}')
  read -r m1 t1 < <(machine)
  echo "$rps $(idle_pct "$m0" "$t0" "$m1" "$t1")"
}
# `PAIRS` pairs of weir and the nginx setup on port $1, one line each: weir's requests/s and
# idle share, then nginx's.
alternate() {
  local i a b
  for i in $(seq "$PAIRS"); do
    if (( i % 2 )); then
      a=$(rps_of "http://127.0.0.1:$WEIR/v1/x" "Authorization: Bearer bench-key")
      b=$(rps_of "http://127.0.0.1:$1/v1/x" "X-Bench: 1")
    else
      b=$(rps_of "http://127.0.0.1:$1/v1/x" "X-Bench: 1")
      a=$(rps_of "http://127.0.0.1:$WEIR/v1/x" "Authorization: Bearer bench-key")
    fi
    echo "$a $b"
  done
}
pairs=$(alternate "$NG")
pairs_fields=$(alternate "$NGU")
curl -s -D - -o /dev/null -H 'Authorization: Bearer bench-key' "http://127.0.0.1:$WEIR/v1/x" | grep -iE '^(x-ratelimit|ratelimit|x-request-id)' > "$WORK/headers.txt" || true
curl -s -D - -o /dev/null -H 'Authorization: Bearer bench-key' "http://127.0.0.1:$NGF/v1/x" | grep -iE '^(x-ratelimit|ratelimit|x-request-id)' > "$WORK/headers-ngf.txt" || true

echo "wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS rounds, then $PAIRS alternating pairs of ${PAIR_SECS}s, $(nproc) cores, weir cpu_affinity $WEIR_AFFINITY, nginx worker_cpu_affinity $NGINX_AFFINITY; weir checks 3 limits (org plan, IP, user) and sends X-RateLimit-*, RateLimit, RateLimit-Policy, X-Request-Id on every response"
echo
echo "CPU columns: µs of CPU (user + system) per request, of the proxy, of the upstream, of the client (wrk) and of the whole machine; idle: the share of the machine's CPU time left idle during the run."
echo
echo "| round | setup | requests/s | p50 | p99 | non-2xx | proxy CPU | upstream CPU | client CPU | machine CPU | idle % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do IFS='|' read -r n rps a b x pc uc cc mc idle round <<<"$row"; echo "| $round | $n | $rps | $a | $b | $x | $pc | $uc | $cc | $mc | $idle |"; done
median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
# The median over setup $1's rounds of column $2 of its rows
# (0 name, 1 requests/s, 2 p50, 3 p99, 4 non-2xx, 5 proxy, 6 upstream, 7 client, 8 machine CPU,
# 9 idle).
col_of() { for row in "${rows[@]}"; do IFS='|' read -r -a f <<<"$row"; if [ "${f[0]}" = "$1" ]; then echo "${f[$2]}"; fi; done | median; }
med_of() { col_of "$1" 1; }
cpu_of() { col_of "$1" 5; }
up_cpu_of() { col_of "$1" 6; }
client_cpu_of() { col_of "$1" 7; }
idle_of() { col_of "$1" 9; }
ud=$(med_of "upstream directly"); wr=$(med_of "weir -> upstream"); nr=$(med_of "nginx limit_req -> upstream")
lr=$(med_of "weir, no identity fields -> upstream"); fr=$(med_of "nginx, same limits and fields -> upstream")
ur=$(med_of "nginx limit_req, sending weir's eight fields -> upstream")
# The ratio of two setups round by round (measured back to back in each), sorted: its spread
# is how far one run of this script can be trusted on this machine.
per_round() {
  for r in $(seq "$ROUNDS"); do
    local a="" b="" n rps round
    for row in "${rows[@]}"; do
      IFS='|' read -r n rps _ _ _ _ _ _ _ _ round <<<"$row"
      [ "$round" = "$r" ] || continue
      [ "$n" = "$1" ] && a=$rps
      [ "$n" = "$2" ] && b=$rps
    done
    python3 -c "print(f'{$a/$b:.3f}')"
  done | sort -n | tr '\n' ' '
}
echo
echo "medians: upstream directly $ud, weir $wr, nginx $nr, weir without identity fields $lr, nginx with the same limits and fields $fr, nginx sending weir's eight fields $ur requests/s"
echo "weir / nginx throughput (medians of the rounds): $(python3 -c "print(f'{$wr/$nr:.2f}x')")"
echo "weir / nginx round by round, sorted: $(per_round "weir -> upstream" "nginx limit_req -> upstream")"
# The pairs in $2 (lines of `alternate`) summed up under the title $1.
summarize() { python3 bench/pairs.py summarize "$1" "$PAIR_SECS" <<<"$2"; }
summarize "weir / nginx (the goal)" "$pairs"
echo "for reference, weir without identity fields / nginx: $(python3 -c "print(f'{$lr/$nr:.2f}x')")"
echo "for reference, weir / nginx with the same limits and fields: $(python3 -c "print(f'{$wr/$fr:.2f}x')") (round by round: $(per_round "weir -> upstream" "nginx, same limits and fields -> upstream"))"
echo "for reference, weir / nginx limit_req sending weir's eight fields: $(python3 -c "print(f'{$wr/$ur:.2f}x')") (round by round: $(per_round "weir -> upstream" "nginx limit_req, sending weir's eight fields -> upstream"))"
summarize "  and in pairs, weir / nginx limit_req sending weir's eight fields" "$pairs_fields"
echo "proxy CPU per request (medians): weir $(cpu_of "weir -> upstream") µs, nginx $(cpu_of "nginx limit_req -> upstream") µs, weir without identity fields $(cpu_of "weir, no identity fields -> upstream") µs, nginx with the same limits and fields $(cpu_of "nginx, same limits and fields -> upstream") µs, nginx sending weir's eight fields $(cpu_of "nginx limit_req, sending weir's eight fields -> upstream") µs"
echo "upstream CPU per request (medians): sent as wrk sends it $(up_cpu_of "upstream directly") µs, sent weir's eight fields $(up_cpu_of "upstream directly, sent weir's eight fields") µs; behind weir $(up_cpu_of "weir -> upstream") µs, behind nginx $(up_cpu_of "nginx limit_req -> upstream") µs, behind nginx sending weir's eight fields $(up_cpu_of "nginx limit_req, sending weir's eight fields -> upstream") µs"
echo "client (wrk) CPU per request (medians): against weir $(client_cpu_of "weir -> upstream") µs, against nginx $(client_cpu_of "nginx limit_req -> upstream") µs"
echo "machine idle (medians): under weir $(idle_of "weir -> upstream")%, under nginx $(idle_of "nginx limit_req -> upstream")%, upstream directly $(idle_of "upstream directly")%"
echo "headers weir sent:"; sed 's/^/    /' "$WORK/headers.txt"
echo "headers nginx with the same limits and fields sent:"; sed 's/^/    /' "$WORK/headers-ngf.txt"

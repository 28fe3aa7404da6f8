#!/usr/bin/env bash
# The local stack: `up` runs the whole system with demo data, `test` runs every test,
# `smoke` checks `up` end to end, `stop` stops what `up --detach` started. Needs PostgreSQL and RabbitMQ installed
# (it starts them when they are down) and the Rust toolchain of rust-toolchain.toml.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clickcollect-target}"
RUN_DIR="${CLICKCOLLECT_RUN_DIR:-$HOME/.cache/clickcollect/run}"
PG_HOST=127.0.0.1
SERVICES=(inventory orders notifications)
declare -A PORTS=([inventory]=8081 [orders]=8082 [notifications]=8083)
# The demo's stand-in Web Push service (a browser's push service, on loopback).
RECEIVER_PORT=8090

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_postgres() {
  if pg_isready -q -h "$PG_HOST" -p 5432 2>/dev/null; then return; fi
  command -v pg_ctlcluster >/dev/null || die "PostgreSQL is not installed: apt-get install postgresql (then rerun)"
  say "starting PostgreSQL"
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 60); do pg_isready -q -h "$PG_HOST" -p 5432 && return; sleep 0.5; done
  die "PostgreSQL did not come up"
}

ensure_rabbitmq() {
  if rabbitmqctl -q status >/dev/null 2>&1; then return; fi
  command -v rabbitmq-server >/dev/null || die "RabbitMQ is not installed: apt-get install rabbitmq-server (then rerun)"
  say "starting RabbitMQ"
  rabbitmq-server -detached
  rabbitmqctl -q await_startup >/dev/null 2>&1 || sleep 5
  # A node left stopped by `rabbitmqctl stop_app` answers status but routes nothing.
  rabbitmqctl -q start_app >/dev/null 2>&1 || true
}

ensure_broker_app() {
  # A test that stops the broker app and dies before restarting it must not break the next run.
  rabbitmqctl -q start_app >/dev/null 2>&1 || true
}

drop_test_databases() {
  psql -h "$PG_HOST" -U postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 't\_%' OR datname LIKE 'bench\_%'" |
    while read -r db; do psql -h "$PG_HOST" -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
}

drop_test_queues() {
  # Tests and benchmarks name their queues with a prefix of their own (t<hex>. / bench<hex>.).
  local queues
  queues="$(rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^(t[0-9a-f]{12}|bench[0-9a-z]+)\.' || true)"
  for q in $queues; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
}

cmd_test() {
  ensure_postgres
  ensure_rabbitmq
  ensure_broker_app
  command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
  cd "$ROOT"
  drop_test_databases
  drop_test_queues
  # A safety net for queues a crashed test leaves behind: unused test queues expire.
  rabbitmqctl -q set_policy clickcollect-test-expiry '^(t[0-9a-f]{12}|bench[0-9a-z]+)\.' \
    '{"expires":120000}' --apply-to queues >/dev/null
  local status=0
  # Everything but the restart tests, in parallel…
  cargo nextest run --workspace --profile ci -E 'not (test(broker_restart) | test(database_restart))' || status=$?
  # …then those one at a time: they stop the machine's one broker or database server.
  cargo nextest run --workspace --profile ci -E 'test(broker_restart) | test(database_restart)' --test-threads 1 || status=$?
  ensure_broker_app
  ensure_postgres
  drop_test_databases
  drop_test_queues
  return "$status"
}

stop_services() {
  for svc in "${SERVICES[@]}" push-receiver; do
    local pidfile="$RUN_DIR/$svc.pid"
    [ -f "$pidfile" ] || continue
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

wait_ready() {
  local svc=$1 port=$2
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return
    kill -0 "$(cat "$RUN_DIR/$svc.pid")" 2>/dev/null || die "$svc exited; see $RUN_DIR/$svc.log"
    sleep 0.5
  done
  die "$svc is not ready; see $RUN_DIR/$svc.log"
}

cmd_up() {
  local detach=0
  [ "${1:-}" = "--detach" ] && detach=1
  ensure_postgres
  ensure_rabbitmq
  ensure_broker_app
  cd "$ROOT"
  say "building (release)"
  cargo build --release -p inventory -p orders -p notifications -p e2e \
    --bin inventory --bin orders --bin notifications --bin seed --bin devtoken --bin push_receiver
  mkdir -p "$RUN_DIR"
  stop_services
  # Each service creates its database when it is missing and applies its migrations.
  for svc in "${SERVICES[@]}"; do
    say "starting $svc on :${PORTS[$svc]} (log: $RUN_DIR/$svc.log)"
    # Local only: the demo's push service is plain http on loopback.
    BIND_ADDR="127.0.0.1:${PORTS[$svc]}" RUST_LOG="${RUST_LOG:-info}" PUSH_ALLOW_LOCAL_ENDPOINTS=true \
      setsid "$CARGO_TARGET_DIR/release/$svc" >"$RUN_DIR/$svc.log" 2>&1 &
    echo $! >"$RUN_DIR/$svc.pid"
  done
  say "starting the demo push receiver on :$RECEIVER_PORT (log: $RUN_DIR/push-receiver.log)"
  rm -f "$RUN_DIR/webpush-subscription.json"
  setsid "$CARGO_TARGET_DIR/release/push_receiver" "127.0.0.1:$RECEIVER_PORT" "$RUN_DIR/webpush-subscription.json" \
    >"$RUN_DIR/push-receiver.log" 2>&1 &
  echo $! >"$RUN_DIR/push-receiver.pid"
  for svc in "${SERVICES[@]}"; do wait_ready "$svc" "${PORTS[$svc]}"; done
  for _ in $(seq 1 50); do [ -s "$RUN_DIR/webpush-subscription.json" ] && break; sleep 0.2; done
  if [ "$(curl -sf http://127.0.0.1:8081/v1/stores | grep -c store_id || true)" = "0" ]; then
    say "loading demo data"
    DEMO_WEBPUSH_SUBSCRIPTION="$RUN_DIR/webpush-subscription.json" \
      "$CARGO_TARGET_DIR/release/seed" http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083
  else
    # The receiver's keys are new at every start: register them again.
    DEMO_WEBPUSH_SUBSCRIPTION="$RUN_DIR/webpush-subscription.json" \
      "$CARGO_TARGET_DIR/release/seed" --device-only http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083
  fi
  local tok="$CARGO_TARGET_DIR/release/devtoken"
  cat <<TXT

clickcollect is up.
  inventory      http://127.0.0.1:8081   Swagger UI http://127.0.0.1:8081/docs/
  orders         http://127.0.0.1:8082   Swagger UI http://127.0.0.1:8082/docs/
  notifications  http://127.0.0.1:8083   Swagger UI http://127.0.0.1:8083/docs/
  push receiver  http://127.0.0.1:$RECEIVER_PORT   (demo-customer's browser; pushes it gets: $RUN_DIR/push-receiver.log)
  logs           $RUN_DIR/*.log

Development tokens (12 h, signed with the development secret):
  admin     $("$tok" admin)
  staff     $("$tok" staff demo-staff PAR-LOUVRE,PAR-BASTILLE)
  customer  $("$tok" customer demo-customer)
  service   $("$tok" service orders)

Try:  curl 'http://127.0.0.1:8081/v1/availability?store_id=PAR-LOUVRE&sku=SKU-00007'
TXT
  if [ "$detach" = 1 ]; then
    echo "Detached: stop with deploy/local.sh stop"
    return
  fi
  echo "Ctrl-C stops everything."
  trap 'echo; say "stopping"; stop_services; exit 0' INT TERM
  while true; do
    for svc in "${SERVICES[@]}"; do
      kill -0 "$(cat "$RUN_DIR/$svc.pid")" 2>/dev/null || { stop_services; die "$svc exited; see $RUN_DIR/$svc.log"; }
    done
    sleep 2
  done
}

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# The README's first command, checked end to end: bring the system up with demo data,
# check every service is ready, walk an order from checkout to the counter (with the push
# arriving at the demo receiver), stop, and make sure nothing is left running.
cmd_smoke() {
  cmd_up --detach
  for svc in "${SERVICES[@]}"; do
    curl -sf "http://127.0.0.1:${PORTS[$svc]}/health/ready" >/dev/null || die "$svc is not ready"
  done
  local tok="$CARGO_TARGET_DIR/release/devtoken" customer staff order code status=""
  customer="$("$tok" customer demo-customer)"
  staff="$("$tok" staff demo-staff PAR-LOUVRE)"
  # Each run takes one unit away: put it back first.
  curl -sf -X POST http://127.0.0.1:8081/v1/stock/bulk -H "Authorization: Bearer $("$tok" admin)" \
    -H 'Content-Type: application/json' \
    -d '{"items":[{"store_id":"PAR-LOUVRE","sku":"SKU-00020","kind":"receipt","quantity":1}]}' >/dev/null ||
    die "smoke: the receipt failed"
  say "smoke: placing an order"
  order="$(curl -sf -X POST http://127.0.0.1:8082/v1/orders -H "Authorization: Bearer $customer" \
    -H 'Content-Type: application/json' \
    -d '{"store_id":"PAR-LOUVRE","lines":[{"sku":"SKU-00020","quantity":1,"unit_price_cents":499}],"contact":{"locale":"fr-FR"}}' |
    json_field id)"
  for _ in $(seq 1 100); do
    status="$(curl -sf "http://127.0.0.1:8082/v1/orders/$order" -H "Authorization: Bearer $customer" | json_field status)"
    [ "$status" = confirmed ] && break
    sleep 0.2
  done
  [ "$status" = confirmed ] || die "smoke: order $order is $status, not confirmed"
  for step in start-picking ready; do
    curl -sf -X POST "http://127.0.0.1:8082/v1/orders/$order/$step" -H "Authorization: Bearer $staff" \
      -H 'Content-Type: application/json' -d '{}' >/dev/null || die "smoke: $step failed"
  done
  code="$(curl -sf "http://127.0.0.1:8082/v1/orders/$order" -H "Authorization: Bearer $customer" | json_field pickup_code)"
  for _ in $(seq 1 100); do
    grep -q "$code" "$RUN_DIR/push-receiver.log" 2>/dev/null && break
    sleep 0.2
  done
  grep "$order" "$RUN_DIR/push-receiver.log" | grep -q "$code" || die "smoke: no push with code $code reached the receiver"
  say "smoke: the push reached the demo browser: $(grep "$code" "$RUN_DIR/push-receiver.log" | head -n 1)"
  curl -sf -X POST "http://127.0.0.1:8082/v1/orders/$order/collect" -H "Authorization: Bearer $staff" \
    -H 'Content-Type: application/json' -d "{\"pickup_code\":\"$code\"}" >/dev/null || die "smoke: collect failed"
  stop_services
  local left
  left="$(pgrep -f "$CARGO_TARGET_DIR/release/(inventory|orders|notifications|push_receiver)( |$)" || true)"
  [ -z "$left" ] || die "smoke: processes left behind: $left"
  say "smoke: up, ready, journey with push, stopped, nothing left running"
}

case "${1:-up}" in
  up) shift || true; cmd_up "$@" ;;
  test) cmd_test ;;
  stop) stop_services ;;
  smoke) cmd_smoke ;;
  *) die "usage: deploy/local.sh up [--detach] | test | smoke | stop" ;;
esac

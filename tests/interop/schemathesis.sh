#!/usr/bin/env bash
# API fuzzing from the contract: schemathesis generates requests from the
# host's own /openapi.json and sends them to the real binary, once per role
# (each role's key is host-level or the `default` datastore's, as `weir
# serve` sets them up without a config file). Fails on any 5xx and on any
# answer that does not match the documented status codes, content types and
# schemas.
#   bash tests/interop/schemathesis.sh WEIR_BINARY [MAX_EXAMPLES]
set -euo pipefail
weir="$(realpath "$1")"
examples="${2:-25}"
cd "$(dirname "$0")/../.."
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
venv="$target/st-venv"
[ -x "$venv/bin/st" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis>=4,<5"
}
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export WEIR_INGEST_KEY=st-ingest WEIR_QUERY_KEY=st-query WEIR_ADMIN_KEY=st-admin
(cd "$work" && exec "$weir" serve --listen "127.0.0.1:$port" --plugins "$target/weir-plugins" --data-dir "$work/data" \
  --plugin-poll-ms 0 --session-timeout-secs 86400 --log warn) > "$work/weir.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
# (Python rather than curl: nothing but python3 is assumed.)
python3 - "$port" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(150):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        break
    except OSError:
        time.sleep(0.2)
PY
# An agent session with a complete snapshot, so that the views answer (a
# view of a datastore without one answers 503 `not_ready`, by design). The
# ingest key runs last: its session creations start the snapshot over.
python3 - "$port" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
        {"X-API-Key": "st-ingest", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))
sid = post("/api/v1/pipe/session/", {"task_id": "schemathesis:pipe"})["session_id"]
post(f"/api/v1/pipe/ingest/{sid}/events", {"source_type": "snapshot", "is_end": True,
    "events": [{"event_type": "update", "rows": [
        {"path": "/a/b.txt", "size": 3, "modified_time": 1700000000}]}]})
PY
status=0
for key in st-admin st-query st-ingest; do
  echo "== schemathesis with the ${key#st-} key"
  set +e
  # From the scratch directory: schemathesis keeps its example database in
  # the working directory.
  (cd "$work" && "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
      -H "X-API-Key: $key" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
      --phases examples,coverage,fuzzing --max-examples "$examples" --workers 2 \
      --request-timeout 20 --seed 10 --no-color --max-failures 20 \
      --exclude-path-regex '/stream$') > "$work/st-$key.log" 2>&1
  code=$?
  set -e
  if [ "$code" -eq 0 ]; then tail -25 "$work/st-$key.log"; else cat "$work/st-$key.log"; fi
  [ "$code" -eq 0 ] || status=1
done
kill -0 $pid 2>/dev/null || { echo "weir died:"; tail -50 "$work/weir.log"; exit 1; }
exit $status

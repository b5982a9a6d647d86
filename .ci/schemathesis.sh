#!/usr/bin/env bash
# Schemathesis with every check (`[checks] enabled = true` in
# .ci/schemathesis.toml: --checks all, less the one exception listed there with
# its reason) against a live service:
# `segments dev` on a free port, which runs `segments serve` and
# `segments archiver` on private embedded Redis and PostgreSQL in a
# temporary data folder. Zero failures or this exits non-zero.
#   SCHEMATHESIS_EXAMPLES  examples per operation and phase (default 10: about 1.5 min)
#   SCHEMATHESIS_SEED      the seed (default fixed, so a run can be replayed)
set -euo pipefail

cd "$(dirname "$0")/.."
readonly BIN=.venv/bin
readonly EXAMPLES=${SCHEMATHESIS_EXAMPLES:-10}
readonly SEED=${SCHEMATHESIS_SEED:-20260309}

data=$(mktemp -d)
chmod 755 "$data"  # an embedded PostgreSQL started as root runs as another user
port=$("$BIN/python" -c 'from segments_dev.embedded import free_port; print(free_port())')
base="http://127.0.0.1:$port"
ready() {
    "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$base/readyz" >/dev/null 2>&1
}

env -u REDIS_URL -u DATABASE_URL SEGMENTS_DATA_DIR="$data" \
    "$BIN/segments" dev --port "$port" >"$data/dev.log" 2>&1 &
dev=$!
stop() {
    kill -TERM "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT

for _ in $(seq 1 240); do
    if ready; then
        break
    fi
    if ! kill -0 "$dev" 2>/dev/null; then
        cat "$data/dev.log" >&2
        echo "segments dev exited before it was ready" >&2
        exit 1
    fi
    sleep 0.5
done
ready || { cat "$data/dev.log" >&2; echo "segments dev is not ready" >&2; exit 1; }

echo "schemathesis: $EXAMPLES examples, seed $SEED, against $base"
"$BIN/schemathesis" --config-file .ci/schemathesis.toml run "$base/schema/openapi.json" \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers 2 \
    --generation-database none \
    --no-color

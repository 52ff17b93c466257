#!/usr/bin/env bash
# What keeping T5 loaded and caching recent texts saves a server: starts `pixart serve` on MODEL
# (a full-size pipeline, e.g. tools/bench/make_random_pipeline.py's, with T5-XXL) once as is
# (T5 kept) and once with --offload-text-encoder, sends the same four jobs to each (prompt A,
# a new prompt B, A again, B with another seed) through POST /v1/images/generations, and
# prints the start-up time, each job's wall time and the server's peak RSS (a SIZE below the
# model's bins is generated at its nearest bin, 1024 px for a 1024 px model). Results:
# docs/server.md ("Text encoder kept").
#
#   MODEL=/tmp/sigma-random tools/bench/serve_text_encoder.sh [STEPS] [SIZE] [DTYPE]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-2}
SIZE=${2:-256x256}
DTYPE=${3:-bf16}
MODEL=${MODEL:?set MODEL to a pipeline folder}
PIXART=${PIXART:-${CARGO_TARGET_DIR:-target}/release/pixart}
body() { printf '{"prompt": "%s", "steps": %s, "size": "%s", "seed": %s}' "$1" "$STEPS" "$SIZE" "$2"; }
for MODE in kept offloaded; do
    LOG=$(mktemp)
    FLAGS=()
    [ "$MODE" = offloaded ] && FLAGS=(--offload-text-encoder)
    START=$(date +%s.%N)
    "$PIXART" serve --model "$MODEL" --dtype "$DTYPE" --port 0 "${FLAGS[@]}" 2>"$LOG" &
    SERVER=$!
    ADDR=
    for _ in $(seq 1 6000); do
        ADDR=$(sed -n 's/^listening on http:\/\///p' "$LOG" | head -1)
        [ -n "$ADDR" ] && break
        kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
        sleep 0.1
    done
    READY=$(date +%s.%N)
    printf '%s: ready after %.1f s\n' "$MODE" "$(echo "$READY - $START" | bc)"
    for JOB in "a red fox in the snow|1" "a lighthouse at dusk, oil painting|2" "a red fox in the snow|3" "a lighthouse at dusk, oil painting|4"; do
        PROMPT=${JOB%|*}
        SEED=${JOB#*|}
        T0=$(date +%s.%N)
        CODE=$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/v1/images/generations" \
            -H 'Content-Type: application/json' -d "$(body "$PROMPT" "$SEED")")
        T1=$(date +%s.%N)
        printf '  %-40s seed %s: HTTP %s in %.2f s\n' "$PROMPT" "$SEED" "$CODE" "$(echo "$T1 - $T0" | bc)"
    done
    printf '  peak RSS %s\n' "$(grep VmHWM /proc/$SERVER/status | awk '{printf "%.2f GiB", $2/1048576}')"
    kill -TERM $SERVER
    wait $SERVER 2>/dev/null || true
    rm -f "$LOG"
done

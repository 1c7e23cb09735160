#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after another, one
# process each, and prints per target: executions, executions per second, corpus size and
# crashes. New inputs go to fuzz/work/<target>/ (ignored by git); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. Crash reproducers land in
# fuzz/artifacts/<target>/; the script exits 1 if any target crashed, hung or ran out of
# memory.
#
#   fuzz/run.sh SECONDS [TARGET...]          fuzz
#   fuzz/run.sh --merge [TARGET...]          minimise fuzz/corpus/<target> + fuzz/work/<target>
#                                            and add the minimised inputs of at most 64 bytes
#                                            to fuzz/corpus/<target>
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# CARGO_TARGET_DIR is honoured (default fuzz/target). SANITIZER=address runs under ASan;
# the default, none, is several times faster and enough for this code, which forbids unsafe.
set -euo pipefail

cd "$(dirname "$0")"
all_targets=(openai_request api_key sse_event engine_event genai_config config_toml)
sanitizer=${SANITIZER:-none}
MAX_COMMITTED_BYTES=64
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
fuzz=(cargo +nightly fuzz)
common=(--sanitizer "$sanitizer" --target-dir "$target_dir")

usage() {
    sed -n '2,17p' "$0" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
if [[ $1 == --merge ]]; then
    shift
    targets=("${all_targets[@]}")
    [[ $# -eq 0 ]] || targets=("$@")
    for target in "${targets[@]}"; do
        # Minimise seeds and finds together into an empty folder (what `cargo fuzz cmin`
        # does), then commit the minimised inputs of at most MAX_COMMITTED_BYTES: short
        # reproductions of most branches, while the corpus stays small enough for git.
        minimised=$(mktemp -d)
        mkdir -p "work/$target" logs
        "${fuzz[@]}" run "${common[@]}" "$target" "$minimised" "corpus/$target" "work/$target" \
            -- -merge=1 -max_len=8192 -timeout=10 >"logs/$target.merge.log" 2>&1
        find "$minimised" -type f -size -"$((MAX_COMMITTED_BYTES + 1))"c \
            -exec cp -n {} "corpus/$target/" \;
        rm -rf "$minimised"
        echo "$target: $(find "corpus/$target" -type f | wc -l) files," \
            "$(cat "corpus/$target"/* | wc -c) bytes"
    done
    exit 0
fi

seconds=$1
shift
[[ $seconds =~ ^[0-9]+$ ]] || usage
targets=("${all_targets[@]}")
[[ $# -eq 0 ]] || targets=("$@")

"${fuzz[@]}" build "${common[@]}"

failed=0
printf '%-16s %12s %9s %12s %8s\n' target executions exec/s corpus crashes
for target in "${targets[@]}"; do
    mkdir -p "work/$target" "artifacts/$target" logs
    log="logs/$target.log"
    dict=()
    [[ -f "dicts/$target.dict" ]] && dict=("-dict=dicts/$target.dict")
    status=0
    "${fuzz[@]}" run "${common[@]}" "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -n 1 | cut -d' ' -f2)
    crashes=$(find "artifacts/$target" -type f | wc -l)
    printf '%-16s %12s %9s %12s %8s\n' "$target" "${executions:-?}" "${per_second:-?}" \
        "${corpus:-?}" "$crashes"
    if [[ $status -ne 0 || $crashes -ne 0 ]]; then
        failed=1
        echo "  $target failed (exit $status): see fuzz/$log and fuzz/artifacts/$target/" >&2
    fi
done
exit "$failed"

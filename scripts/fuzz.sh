#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of everything a peer can feed Portcullis, on stable
# Rust: `./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]`.
#
#   ./scripts/fuzz.sh 5            # the CI smoke run: every target, 5 s each
#   ./scripts/fuzz.sh 1800 krl     # a longer run of one target
#
# Targets live in fuzz/fuzz_targets/; seeds in fuzz/corpus/<target>/ (committed, small).
# What a run learns goes to target/fuzz/corpus/<target>/ and survives between runs on
# this machine. A crash stops the run with the input saved under
# target/fuzz/artifacts/<target>/; turn it into a regression test in the crate that
# owns the code, then fix it. No sanitizer runtime is needed: the code under test
# forbids `unsafe`, so memory errors are not what we look for — panics, overflows,
# debug assertions, runaway memory and time are.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-5}
shift || true
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^portcullis-fuzz$')
fi

# cargo-fuzz's instrumentation, without its nightly-only sanitizer flags. An explicit
# --target keeps these flags off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$PWD/target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing"
cargo build --locked --manifest-path fuzz/Cargo.toml --release --target "$host" --bins

for t in "${targets[@]}"; do
    work="$CARGO_TARGET_DIR/corpus/$t"
    artifacts="$CARGO_TARGET_DIR/artifacts/$t"
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
    printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
    log="$CARGO_TARGET_DIR/$t.log"
    if "$CARGO_TARGET_DIR/$host/release/$t" "$work" "fuzz/corpus/$t" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
    else
        status=$?
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed (exit $status); the input is in $artifacts/" >&2
        exit "$status"
    fi
done

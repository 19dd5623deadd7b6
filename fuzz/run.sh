#!/usr/bin/env bash
# Builds the fuzz targets (cargo fuzz, libFuzzer, no sanitizer: stable Rust has none), replays the
# committed seeds and crash reproducers through each target, then fuzzes each target for SECONDS
# (default 60; 0 only replays). A crash stops the script with libFuzzer's report; the input that
# caused it is left in fuzz/artifacts/TARGET/.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --version 0.13.2 --locked`). The corpora that the
# fuzzing grows stay in fuzz/corpus/ (git-ignored), so a later run starts from them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} == 0 ]]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
# Without a sanitizer cargo-fuzz passes only flags that stable rustc takes (-Cpasses=sancov-module
# and -Cllvm-args for the coverage counters and comparison tracing).
cargo fuzz build --fuzz-dir fuzz --sanitizer none
# A bounded input size: the largest seed is the checkpoint (about 25 KB); readers of bigger files
# do nothing different per byte.
flags=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    dict=()
    case "$t" in
        # Readers of JSON and safetensors headers: numbers at the edges of what they check.
        model_config | run_dir | checkpoint | hf_dir | batch_file | capi) dict=(-dict=fuzz/json.dict) ;;
    esac
    replay=("fuzz/seeds/$t")
    [[ -d "fuzz/regressions/$t" ]] && replay+=("fuzz/regressions/$t")
    echo "== $t: replaying ${replay[*]}"
    cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "${replay[@]}" -- -runs=0 "${flags[@]}" "${dict[@]}"
    if [[ "$seconds" != 0 ]]; then
        echo "== $t: fuzzing for $seconds s"
        cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "fuzz/corpus/$t" "${replay[@]}" -- \
            -max_total_time="$seconds" "${flags[@]}" "${dict[@]}"
    fi
    # The scratch folders of the target's processes (fuzz/src/lib.rs), which outlive them.
    rm -rf /dev/shm/electra-fuzz-"$t"-* "${TMPDIR:-/tmp}"/electra-fuzz-"$t"-*
done

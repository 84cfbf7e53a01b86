#!/usr/bin/env bash
# Fuzzes every parser that takes outside input (the targets of
# src/fuzz_targets.rs, built by the cargo-fuzz crate in fuzz/) for a bounded time.
#
#   scripts/fuzz.sh                   every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh  longer
#   scripts/fuzz.sh envelope          some targets only
#
# Needs a nightly toolchain (installed with rustup when missing) and cargo-fuzz
# (installed when missing). The corpus grows in fuzz/corpus/<target>/ (not
# committed), starting from fuzz/seeds/<target>/. When a target fails, its
# reproducer is copied from fuzz/artifacts/<target>/ to
# fuzz/regressions/<target>/, which `cargo test --test fuzz_regressions` replays
# on stable; the script goes on with the other targets and exits non-zero.
# Not run in CI: it is for developers.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "installing the $toolchain toolchain"
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

cargo "+$toolchain" fuzz build

failed=()
summary=()
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$corpus" "$artifacts" "fuzz/seeds/$target"
  stamp="$(mktemp)"
  log="$artifacts/last-run.log"
  echo "== $target: ${seconds}s"
  status=0
  cargo "+$toolchain" fuzz run "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>&1 | tee "$log" || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    mkdir -p "fuzz/regressions/$target"
    found=0
    while IFS= read -r artifact; do
      cp "$artifact" "fuzz/regressions/$target/"
      echo "kept fuzz/regressions/$target/$(basename "$artifact")" \
        "(minimize: cargo +$toolchain fuzz tmin $target $artifact)"
      found=1
    done < <(find "$artifacts" -type f -newer "$stamp" ! -name last-run.log)
    [ "$found" = 1 ] || echo "$target failed without a reproducer: see $log"
    summary+=("$target: FAILED after ${runs:-?} runs")
  else
    summary+=("$target: ${runs:-?} runs in ${seconds}s, no failure")
  fi
  rm -f "$stamp"
done

echo
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failing targets: ${failed[*]}; reproducers in fuzz/regressions/ (cargo test --test fuzz_regressions)"
  exit 1
fi

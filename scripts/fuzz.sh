#!/usr/bin/env bash
# Fuzzes, with cargo-fuzz (libFuzzer), the snapshot loader (`snapshot`), the NPY reader (`npy`)
# and the forward pass on files as `kasmina forward` runs it (`forward_files`), each for
# FUZZ_SECONDS (600 by default), from a corpus seeded with valid files. The three run at once
# (FUZZ_SEQUENTIAL=1: one after another). Needs rustup (installs the nightly toolchain and
# cargo-fuzz when missing); not part of CI. A crash stops its target and is left in
# fuzz/artifacts/<target>/; turn it into a regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-600}
rustup toolchain install nightly --profile minimal >/dev/null 2>&1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo build --quiet --release -p kasmina-cli
k=target/release/kasmina
seeds=fuzz/seeds
rm -rf "$seeds" && mkdir -p "$seeds"/snapshot "$seeds"/npy "$seeds"/forward_files

# Valid snapshots: dormant, strict, and seeds germinated through the lifecycle.
"$k" state new --hidden 8 --seeds 2 "$seeds/snapshot/dormant.safetensors" >/dev/null
"$k" state new --hidden 12 --seeds 3 --strict 3 "$seeds/snapshot/strict.safetensors" >/dev/null
cp "$seeds/snapshot/dormant.safetensors" "$seeds/snapshot/grown.safetensors"
"$k" state germinate "$seeds/snapshot/grown.safetensors" --seed 1 --blueprint-id 7 --type mlp --strategy fixed-ramp >/dev/null
"$k" state transition "$seeds/snapshot/grown.safetensors" --seed 1 --to training >/dev/null

# Valid NPY files (version 1 header padded to 64 bytes): f32 [2, 8], f16 [3, 4], f64 Fortran [2, 3].
npy() { # descr fortran shape data-bytes out
  local h="{'descr': '$1', 'fortran_order': $2, 'shape': $3, }"
  while [ $(((10 + ${#h} + 1) % 64)) -ne 0 ]; do h="$h "; done
  { printf '\x93NUMPY\x01\x00'; printf "\\x$(printf %02x $(((${#h} + 1) & 255)))\\x$(printf %02x $(((${#h} + 1) >> 8)))"
    printf '%s\n' "$h"; head -c "$4" /dev/urandom; } > "$5"
}
npy '<f4' False '(2, 8)' 64 "$seeds/npy/f32.npy"
npy '<f2' False '(3, 4)' 24 "$seeds/npy/f16.npy"
npy '<f8' True '(2, 3)' 48 "$seeds/npy/f64-fortran.npy"
# forward_files: the width byte of `npy` is the file's first byte there; here two bytes of
# snapshot length, the snapshot, then an input of its width.
for s in dormant grown; do
  n=$(wc -c < "$seeds/snapshot/$s.safetensors")
  npy '<f4' False '(4, 8)' 128 /tmp/kasmina-fuzz-x.npy
  { printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8)))"; cat "$seeds/snapshot/$s.safetensors" /tmp/kasmina-fuzz-x.npy; } \
    > "$seeds/forward_files/$s.bin"
done
for f in "$seeds"/npy/*.npy; do { printf '\x07'; cat "$f"; } > "$f.w8"; rm "$f"; done

run() {
  mkdir -p "fuzz/corpus/$1"
  (cd fuzz && cargo +nightly fuzz run "$1" "corpus/$1" "seeds/$1" -- -max_total_time="$secs" -rss_limit_mb=4096 \
    -print_final_stats=1) > "fuzz/$1.log" 2>&1
  echo "$1: rc=$? $(grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "fuzz/$1.log" | tr '\n' ' ')"
}
(cd fuzz && cargo +nightly fuzz build -O >/dev/null 2>&1)
if [ "${FUZZ_SEQUENTIAL:-0}" = 1 ]; then
  for t in snapshot npy forward_files; do run "$t"; done
else
  for t in snapshot npy forward_files; do run "$t" & done
  wait
fi

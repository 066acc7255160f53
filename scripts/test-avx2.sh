#!/usr/bin/env bash
# The tests that run in-process (kernels, golden parity of every family, int8 and bf16 scoring,
# training steps) once more on an emulated AVX2-only CPU: QEMU's user-mode EPYC-Rome (Zen 2:
# AVX2 and FMA, no AVX-512), so that the paths an AVX2-only machine takes (the gemm crate's AVX2
# kernels, rten's int8 kernel with 7-bit weights, the AVX2 versions of the vectorised loops,
# bf16 refused) are tested on any x86-64 host. QEMU's speed says nothing of that machine's.
# The CLI and server tests are left out: the processes they start would run on the host's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-x86_64 > /dev/null; then
    echo "error: qemu-x86_64 not found; install Debian's qemu-user" >&2
    exit 1
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu EPYC-Rome"
# QEMU warns, at every start, of host features it does not emulate: not the tests' business.
# `--include-ignored` adds `the_cpu_is_avx2_only`, which checks the emulated CPU.
cargo test --locked --features mpi --lib --test golden --test families --test train_step \
    --test tasks -- --include-ignored 2> >(grep -v "TCG doesn't support requested feature" >&2)

#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): installs what the tests need
# and the machine lacks, fetches the fixtures, then runs every test, then the in-process ones
# again on an emulated AVX2-only CPU, then the Python package's. Needs Rust and Python's pip; OpenMPI and clang
# (tests/mpi.rs and the mpi crate's bindings) and QEMU's user mode (scripts/test-avx2.sh) come
# from apt where missing: as root, or through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v mpirun > /dev/null || missing+=(openmpi-bin libopenmpi-dev)
command -v clang > /dev/null || missing+=(clang)
command -v qemu-x86_64 > /dev/null || missing+=(qemu-user)
if ((${#missing[@]})); then
    as_root=()
    if [[ $(id -u) != 0 ]]; then
        if ! command -v sudo > /dev/null || ! command -v apt-get > /dev/null; then
            echo "error: the tests need ${missing[*]} (Debian/Ubuntu packages); install them," \
                "or run without them: scripts/fetch-fixtures.sh && cargo test" >&2
            exit 1
        fi
        as_root=(sudo)
    fi
    echo "installing ${missing[*]} with apt-get" >&2
    "${as_root[@]}" apt-get update -q > /dev/null
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /dev/null
fi
bash scripts/fetch-fixtures.sh
cargo test --locked --features mpi 2>&1
bash scripts/test-avx2.sh 2>&1
bash scripts/test-python.sh 2>&1

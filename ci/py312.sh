#!/usr/bin/env bash
# The Python 3.12 leg: the test suite on Python 3.12 with ArviZ 1.x (arviz-base / arviz-stats / arviz-plots).
#
# The environment is built once, under a fixed cache path, from ci/py312-requirements.txt (exact pins;
# about 5 GB, most of it torch's CUDA libraries: the only torch 2.13.0 wheel for Python 3.12), and reused
# while that file is unchanged (its hash is stamped in the environment). Each run installs this checkout
# into it (editable, no dependencies: seconds), checks that pyproject's dependencies are met, then runs
# pytest with the arguments given (default: the whole suite, as .ci/run does on Python 3.11).
#
#   bash ci/py312.sh                                   # the whole suite
#   bash ci/py312.sh -q tests/test_arviz_compat.py     # some tests
#   PYRO_VAE_PY312_ENV=/elsewhere bash ci/py312.sh     # another cache path
#   PYRO_VAE_PY312=/usr/bin/python3.12 bash ci/py312.sh  # another Python 3.12 (or 3.13) interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYRO_VAE_PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}
ENV=${PYRO_VAE_PY312_ENV:-$HOME/.cache/pyro_vae/py312}
LOCK=ci/py312-requirements.txt
[ -x "$PY" ] || { echo "ci/py312.sh: no Python at $PY (set PYRO_VAE_PY312)" >&2; exit 2; }

mkdir -p "$(dirname "$ENV")"
# one run at a time per environment: a second checkout would re-point the editable install mid-run
exec 9>"$ENV.lock"
flock 9

want=$({ cat "$LOCK"; "$PY" -VV; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$ENV/.built-from" 2>/dev/null)" != "$want" ]; then
    echo "ci/py312.sh: building $ENV from $LOCK (once: about 5 GB, a few minutes)" >&2
    start=$SECONDS
    rm -rf "$ENV"
    "$PY" -m venv "$ENV"
    "$ENV/bin/python" -m pip install -q --disable-pip-version-check -r "$LOCK"
    echo "$want" > "$ENV/.built-from"  # last: an interrupted build has no stamp and is built again
    echo "ci/py312.sh: built in $((SECONDS - start)) s" >&2
fi

"$ENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
"$ENV/bin/python" -m pip check >/dev/null || { "$ENV/bin/python" -m pip check >&2; exit 2; }
"$ENV/bin/python" -c "import sys, arviz, torch; print(f'ci/py312.sh: Python {sys.version.split()[0]}, ArviZ {arviz.__version__}, torch {torch.__version__}')"
# the environment's pyro-vae script first on PATH: the CLI tests run it
export PATH="$ENV/bin:$PATH"
exec "$ENV/bin/python" -m pytest "${@:--q}"

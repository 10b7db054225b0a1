#!/usr/bin/env bash
# Run the project's nox sessions (noxfile.py) on a machine that has nothing but
# python3 with its venv module and access to PyPI.
#
#   bash scripts/nox.sh                                  the tests: lint, types, package, suite
#   bash scripts/nox.sh -s status -- --capability 10.0   the status command
#   bash scripts/nox.sh --list                           every session
#
# nox and uv are installed into a virtual environment of this project's own,
# ${XDG_CACHE_HOME:-~/.cache}/vllm-moe-routing/tools, never into the system or
# user site (an externally managed python3, PEP 668, refuses that anyway), and
# are called by their path there: nothing relies on them being on PATH. The
# sessions' environments are kept next to it (see noxfile.py).
set -euo pipefail

tools_spec="nox==2026.10.20 uv==0.13.9"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vllm-moe-routing
tools=$cache/tools

if [ "$(cat "$tools/.spec" 2>/dev/null)" != "$tools_spec" ]; then
  python=$(command -v python3 || true)
  if [ -z "$python" ]; then
    echo "scripts/nox.sh: needs python3 (3.10 or newer) on PATH" >&2
    exit 2
  fi
  echo "scripts/nox.sh: installing $tools_spec into $tools" >&2
  rm -rf "$tools"
  if ! "$python" -m venv "$tools"; then
    echo "scripts/nox.sh: '$python -m venv' failed; on Debian and Ubuntu install" \
      "the python3-venv package" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check $tools_spec
  echo "$tools_spec" >"$tools/.spec"
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "$tools/bin/python" -m nox "$@"

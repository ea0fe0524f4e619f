# Sourced by the scripts here: make sure .venv exists with the project, its test extras and
# the benchmark extras (CI runs `python -m bench --quick` to prove the harness works).
# Reinstalls when pyproject.toml is newer than the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FFRTMP_VENV:-$root/.venv}"
stamp="$venv/.ffrtmp-installed"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$root[test,bench]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"

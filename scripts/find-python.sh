#!/usr/bin/env bash
# Print the path of a Python >= 3.12 for the controller venv (ansible-core 2.21 needs it).
# Order: $PYTHON, python3.13/python3.12 on PATH, pyenv's installs, python3. A pyenv shim that
# refuses to run (version not selected) is skipped because each candidate is actually executed.
set -u
ok() { "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
cands=()
[ -n "${PYTHON:-}" ] && cands+=("$PYTHON")
for v in 3.13 3.12; do
  p=$(command -v "python$v" 2>/dev/null) && cands+=("$p")
done
root=${PYENV_ROOT:-$HOME/.pyenv}
command -v pyenv >/dev/null 2>&1 && root=$(pyenv root)
if [ -d "$root/versions" ]; then
  for d in $(ls -d "$root"/versions/3.13* "$root"/versions/3.12* 2>/dev/null | sort -rV); do
    for b in "$d"/bin/python3.1[23]; do [ -x "$b" ] && cands+=("$b"); done
  done
fi
p=$(command -v python3 2>/dev/null) && cands+=("$p")
for c in "${cands[@]}"; do
  if ok "$c"; then echo "$c"; exit 0; fi
done
echo "error: no Python >= 3.12 found (tried: ${cands[*]:-nothing}). Install python3.13 or python3.12," \
     "or point PYTHON=/path/to/python3.12+ at one." >&2
exit 1

#!/usr/bin/env bash
# Run two commands side by side: the first in the background, its output kept in LOG and printed once both
# are done; the second in the foreground. Exits non-zero when either failed.
#   scripts/beside.sh LOG 'background command' foreground command...
set -uo pipefail
log=$1 background=$2
shift 2
mkdir -p "$(dirname "$log")"
bash -c "$background" > "$log" 2>&1 &
pid=$!
"$@"
rc=$?
wait "$pid"
brc=$?
echo "---- $background (exit $brc; log: $log) ----"
cat "$log"
[ "$rc" -eq 0 ] && [ "$brc" -eq 0 ]

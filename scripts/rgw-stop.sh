#!/usr/bin/env bash
# Stops the Ceph daemons that scripts/rgw-start.sh started in $DIR (their pids are in
# $DIR/pids; nothing else is signalled) and deletes the cluster's data. Safe to run when
# nothing is running. KEEP=1 keeps $DIR (logs, data) for a look afterwards.
set -uo pipefail

DIR=${DIR:-${TMPDIR:-/tmp}/hoist-rgw}
[[ -f $DIR/pids ]] || exit 0

pids=$(tac "$DIR/pids")
# radosgw first, monitor last (reverse start order), so no daemon waits on a dead monitor.
for p in $pids; do kill "$p" 2>/dev/null; done
for _ in $(seq 1 60); do
  alive=0
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  ((alive)) || break
  sleep 0.25
done
for p in $pids; do
  if kill -0 "$p" 2>/dev/null; then
    printf 'rgw-stop: pid %s did not stop within 15 s; sending SIGKILL\n' "$p" >&2
    kill -9 "$p" 2>/dev/null
  fi
done
rm -f "$DIR/pids"
if [[ ${KEEP:-0} != 1 && -e $DIR/.hoist-rgw ]]; then
  rm -rf "$DIR"
fi

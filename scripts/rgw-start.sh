#!/usr/bin/env bash
# Starts a throwaway single-node Ceph cluster with radosgw serving S3, for the S3 storage
# tests (test/storage/s3.test.ts) and benchmarks. Prints the endpoint URL on stdout (and
# nothing else there), so scripts can do:
#
#   export HOIST_TEST_S3_ENDPOINT=$(bash scripts/rgw-start.sh)
#   ...
#   bash scripts/rgw-stop.sh
#
# One monitor, one manager, one OSD (bluestore on a sparse 20 GiB file) and radosgw (beast)
# on 127.0.0.1:$RGW_PORT, with an S3 user whose keys are testkey / testsecret. Everything
# lives under $DIR; a second start in the same DIR stops the first instance and starts
# afresh. About 20 s to start and 1 GB of RAM.
#
# Needs, once, as root (Debian 12's ceph 16.2):
#   apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-mgr ceph-common
#
# Settings (environment):
#   DIR          where the cluster lives (default ${TMPDIR:-/tmp}/hoist-rgw)
#   RGW_PORT     S3 port on 127.0.0.1 (default 7480)
#   OBJECTSTORE  bluestore (default) or memstore (keeps data in the OSD's RAM, ~1.8x of it)
set -euo pipefail

DIR=${DIR:-${TMPDIR:-/tmp}/hoist-rgw}
RGW_PORT=${RGW_PORT:-7480}
OBJECTSTORE=${OBJECTSTORE:-bluestore}
ENDPOINT="http://127.0.0.1:$RGW_PORT"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'rgw-start: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for bin in ceph-mon ceph-osd ceph-mgr radosgw radosgw-admin ceph ceph-authtool monmaptool uuidgen curl; do
  command -v "$bin" >/dev/null || die "$bin not found; install Ceph with: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-mgr ceph-common"
done

# Same DIR: stop what runs there and start clean. A DIR we did not make is never wiped.
DIR="$DIR" bash "$HERE/rgw-stop.sh"
if [[ -e $DIR && ! -e $DIR/.hoist-rgw ]] && [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
  die "$DIR exists and was not made by this script; choose another DIR"
fi
if curl -s -o /dev/null "$ENDPOINT/"; then
  die "something already answers on $ENDPOINT (another DIR's radosgw?); stop it or set RGW_PORT"
fi

T0=$(date +%s%N)
rm -rf "$DIR"
mkdir -p "$DIR"/{mon,mgr,osd0,rgw,run,log}
touch "$DIR/.hoist-rgw"
: > "$DIR/pids"

FSID=$(uuidgen)
CONF="$DIR/ceph.conf"
cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:3300
public addr = 127.0.0.1
# radosgw 16.2 will not start with cephx off ('auth ... required = none' fails with -13 in
# get_initial_auth_request), so every daemon gets a key, all in this one keyring.
keyring = $DIR/keyring
auth allow insecure global id reclaim = false
# The default (30% free) turns the cluster HEALTH_WARN on these machines' disks.
mon data avail warn = 2
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
[mon]
mon data = $DIR/mon
[mgr]
mgr data = $DIR/mgr
[osd]
osd data = $DIR/osd0
osd objectstore = $OBJECTSTORE
memstore device bytes = $((6 * 1024 * 1024 * 1024))
bluestore block path = $DIR/osd0/block.file
bluestore block create = true
bluestore block size = $((20 * 1024 * 1024 * 1024))
bluestore block db create = false
bluestore block wal create = false
osd memory target = 1073741824
[client.rgw.a]
# tcp_nodelay: without it beast sends a response's body behind its head only once the client
# ACKs the head, which the client delays (40 ms): every GET with a body on a kept-alive
# connection took 43 ms instead of 2-4 (AWS S3 and MinIO answer without such a stall).
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw data = $DIR/rgw
rgw dns name = localhost
rgw thread pool size = 64
# Deleted and overwritten data is freed after 2 h by default; tests churn, so free it in seconds.
rgw gc obj min wait = 10
rgw gc processor period = 10
CONF
export CEPH_CONF=$CONF

# Runs a daemon in the foreground under nohup and records its pid for rgw-stop.sh.
daemon() {
  local name=$1
  shift
  nohup "$@" -f -c "$CONF" > "$DIR/log/$name.out" 2>&1 &
  echo $! >> "$DIR/pids"
}

fail_with_log() {
  say "$1; last lines of $DIR/log/$2:"
  tail -n 20 "$DIR/log/$2" >&2 || true
  exit 1
}

KEYRING="$DIR/keyring"
ceph-authtool --create-keyring "$KEYRING" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null

say "monitor"
monmaptool --create --fsid "$FSID" --addv a '[v2:127.0.0.1:3300]' "$DIR/monmap" >/dev/null
# --mkfs imports the keyring into the monitor's auth database: the keys above become valid.
ceph-mon --mkfs -i a --monmap "$DIR/monmap" -c "$CONF" > "$DIR/log/mon-mkfs.out" 2>&1 || fail_with_log "ceph-mon --mkfs failed" mon-mkfs.out
daemon mon ceph-mon -i a
timeout 60 ceph -s >/dev/null 2>&1 || fail_with_log "the monitor did not answer within 60 s" mon.out

say "manager and OSD"
daemon mgr ceph-mgr -i x
OSD_UUID=$(uuidgen)
OSD_ID=$(timeout 60 ceph osd new "$OSD_UUID")
ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" -c "$CONF" > "$DIR/log/osd-mkfs.out" 2>&1 || fail_with_log "ceph-osd --mkfs failed" osd-mkfs.out
daemon osd ceph-osd -i "$OSD_ID"
up=0
for _ in $(seq 1 120); do
  if timeout 10 ceph osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; then up=1; break; fi
  sleep 0.5
done
((up)) || fail_with_log "the OSD did not come up within 60 s" osd.out

say "radosgw on $ENDPOINT"
daemon rgw radosgw -n client.rgw.a
up=0
for _ in $(seq 1 240); do
  if curl -s -o /dev/null "$ENDPOINT/"; then up=1; break; fi
  sleep 0.5
done
((up)) || fail_with_log "radosgw did not answer on $ENDPOINT within 120 s" rgw.out
timeout 60 radosgw-admin user create --uid=test --display-name=test --access-key=testkey --secret-key=testsecret >/dev/null

say "ready after $(( ($(date +%s%N) - T0) / 1000000 )) ms; user testkey/testsecret; DIR=$DIR; pids $(tr '\n' ' ' < "$DIR/pids")"
echo "$ENDPOINT"

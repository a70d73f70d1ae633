#!/usr/bin/env bash
# Installs what the test suite needs and runs all of it: the one command for a developer's
# machine and for CI (.ci/run). Fresh Debian 12, as root:
#
#   sudo bash scripts/test-all.sh
#
# As another user it installs nothing system-wide and says what is missing instead.
# Extra arguments go to vitest, e.g. `bash scripts/test-all.sh test/e2e`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

log() { printf '\n==> %s\n' "$*"; }

# --- System packages -------------------------------------------------------------------
# skopeo and umoci are the real clients of test/e2e/skopeo.test.ts; Ceph's radosgw is the
# real S3 server of the S3 tests (about 37 s and 286 MB to install); prometheus is the real
# scraper of test/e2e/prometheus.test.ts, which starts its own on a free port (the package's
# own service, if it starts, is left alone); docker-registry is the upstream of the
# pull-through cache tests (test/proxy/) and containerd's ctr a client of the cache
# (test/e2e/ctr-mirror.test.ts; its daemon runs as root).
apt_packages=(skopeo umoci radosgw ceph-mon ceph-osd ceph-mgr ceph-common prometheus docker-registry containerd)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    log "apt-get install ${missing[*]}"
    apt-get update
    apt-get install -y --no-install-recommends "${apt_packages[@]}"
  else
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "(or run this script as root: sudo bash scripts/test-all.sh)" >&2
    exit 1
  fi
else
  log "system packages present: ${apt_packages[*]}"
fi

# --- Node.js ---------------------------------------------------------------------------
if ! command -v node >/dev/null; then
  echo "error: node is not installed; Hoist needs Node.js 20 or newer" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  echo "error: Node.js $(node --version) is too old; Hoist needs Node.js 20 or newer" >&2
  exit 1
fi
log "node $(node --version), npm $(npm --version)"

log "npm ci"
npm ci --no-audit --no-fund

# --- Services for the tests ------------------------------------------------------------
# A throwaway single-node Ceph with radosgw on 127.0.0.1 (scripts/rgw-start.sh); the S3
# tests read its endpoint and create their own buckets.
cleanup() {
  bash scripts/rgw-stop.sh || true
}
trap cleanup EXIT
log "radosgw (scripts/rgw-start.sh)"
HOIST_TEST_S3_ENDPOINT=$(bash scripts/rgw-start.sh)
export HOIST_TEST_S3_ENDPOINT
log "S3 endpoint $HOIST_TEST_S3_ENDPOINT"

# --- Tests -----------------------------------------------------------------------------
log "typecheck (src and test, strict)"
npm run --silent typecheck

log "vitest run $*"
results=$(mktemp -t hoist-vitest-XXXXXX.json)
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$results" "$@" || status=$?

# Tests allowed to be skipped (it.skip, it.todo, describe.skip), one per line as
# "<file relative to the repository> > <full test name>", each with its reason in a comment
# above it. None today: a skipped test is a check that does not run, so any other skip fails
# the run (a name filter, -t, skips the rest on purpose and is not checked).
allowed_skips=(
)
name_filter=0
for arg in "$@"; do
  case $arg in -t | -t* | --testNamePattern | --testNamePattern=*) name_filter=1 ;; esac
done

# A closing line any CI log reader understands, taken from vitest's own JSON report.
if [[ -s $results ]]; then
  node -e '
    const [file, root, filtered, ...allowed] = process.argv.slice(1);
    const r = JSON.parse(require("node:fs").readFileSync(file, "utf8"));
    const skipped = [];
    for (const f of r.testResults) {
      for (const a of f.assertionResults) {
        if (a.status === "passed" || a.status === "failed") continue;
        skipped.push(`${require("node:path").relative(root, f.name)} > ${a.fullName}`);
      }
    }
    console.log(`\nvitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped.length} skipped`);
    const unexpected = filtered === "1" ? [] : skipped.filter((s) => !allowed.includes(s));
    if (unexpected.length > 0) {
      console.log(`error: ${unexpected.length} skipped test(s) not listed in scripts/test-all.sh allowed_skips:`);
      for (const s of unexpected) console.log(`  ${s}`);
      process.exit(1);
    }
  ' "$results" "$PWD" "$name_filter" "${allowed_skips[@]}" || status=1
else
  echo "error: vitest wrote no JSON report ($results)" >&2
  status=1
fi
rm -f "$results"
exit "$status"

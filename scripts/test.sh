#!/usr/bin/env bash
# Lint, type-check, build, then the whole default test suite. Used by `make test` and `.ci/run`.
# The suite runs on the build users get: compiled where a C compiler exists, else pure Python
# (scripts/build_native.py says which; LOOM_PURE_PYTHON=1 selects pure Python).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# Real components some tests run, from Debian's packages: nginx in front of loomd and htpasswd
# (apache2-utils) for its Basic users (tests/e2e/test_nginx_gateway.py, tests/gateway);
# chromium and chromium-driver for the dashboard (tests/obs/test_dashboard.py); prometheus and
# promtool (tests/obs/test_prometheus.py, test_deploy.py); softhsm2, a PKCS#11 token for the
# keys held outside the node (tests/e2e/test_keys_hsm.py). Installed here when missing, as root
# with apt-get (one `apt-get update`, one install); where that cannot run, those tests skip and
# say why.
missing=()
{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
{ command -v softhsm2-util >/dev/null && [ -f /usr/lib/softhsm/libsofthsm2.so ]; } \
  || missing+=(softhsm2)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]} from Debian's packages for the tests that run them" \
         "(apt-get update, apt-get install)"
    # The whole list, by name (packages already installed are left as they are).
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q \
        && apt-get install -y -q nginx apache2-utils chromium chromium-driver prometheus softhsm2; } \
      || echo "apt-get could not install ${missing[*]}: the tests that need them will skip" >&2
    # Debian's prometheus starts a service of its own on install: stop it, so it holds no port
    # (the tests run their own instance on a free loopback port).
    if command -v systemctl >/dev/null; then
      systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
    for pidfile in /run/prometheus/prometheus.pid /run/prometheus/prometheus-node-exporter.pid; do
      [ -f "$pidfile" ] && { kill "$(cat "$pidfile")" 2>/dev/null || true; }
    done
  else
    echo "missing ${missing[*]} and apt-get cannot run here (not root): the tests that need" \
         "them will skip; install them with: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi
set -e
echo "== ruff"; $BIN/ruff check loom tests bench scripts
echo "== mypy"; $BIN/mypy
echo "== build"; $BIN/python scripts/build_native.py
set +e
echo "== pytest"
$BIN/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the suite itself" >&2
  exit 1
fi
exit "$rc"

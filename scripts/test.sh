#!/usr/bin/env bash
# Lint, type-check, then the whole default test suite. Used by `make test` and `.ci/run`.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# The gateway tests (tests/e2e/test_nginx_gateway.py) run a real nginx from Debian's packages,
# and htpasswd from apache2-utils for its Basic users. Installed here when missing and possible
# (root with apt-get); otherwise those tests skip and say why.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] || ! command -v htpasswd >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "== installing nginx and apache2-utils for the gateway tests (apt-get)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx apache2-utils \
      || echo "apt-get could not install nginx: the gateway tests will skip" >&2
  else
    echo "nginx or htpasswd missing and apt-get cannot run here (not root): the gateway tests" \
         "will skip; install them with: sudo apt-get install -y nginx apache2-utils" >&2
  fi
fi
# The dashboard's browser test (tests/obs/test_dashboard.py) drives Debian's chromium through
# chromium-driver; installed here when missing and possible, otherwise that test skips.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "== installing chromium and chromium-driver for the dashboard test (apt-get update, install)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
      || echo "apt-get could not install chromium: the dashboard's browser test will skip" >&2
  else
    echo "chromium or chromedriver missing and apt-get cannot run here (not root): the" \
         "dashboard's browser test will skip; install them with:" \
         "sudo apt-get install -y chromium chromium-driver" >&2
  fi
fi
# The observability tests (tests/obs/test_prometheus.py, test_deploy.py) run a real Prometheus
# and promtool from Debian's prometheus package. Installed here when missing and possible; the
# package may start its own service on install: stopped here, so it holds no port (the tests
# run their own instance on a free loopback port). Without it those tests skip and say why.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "== installing prometheus (apt-get) for the observability tests"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; } \
      || echo "apt-get could not install prometheus: its tests will skip" >&2
    if command -v systemctl >/dev/null; then
      systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
    for pidfile in /run/prometheus/prometheus.pid /run/prometheus/prometheus-node-exporter.pid; do
      [ -f "$pidfile" ] && { kill "$(cat "$pidfile")" 2>/dev/null || true; }
    done
  else
    echo "prometheus missing and apt-get cannot run here (not root): its tests will skip;" \
         "install it with: sudo apt-get install -y prometheus" >&2
  fi
fi
set -e
echo "== ruff"; $BIN/ruff check loom tests bench scripts
echo "== mypy"; $BIN/mypy
set +e
# htpasswd (Debian's apache2-utils) writes the bcrypt hashes the gateway's Basic tests verify;
# without it those tests skip, saying why.
if ! command -v htpasswd >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get install -y -qq apache2-utils || { apt-get update -qq && apt-get install -y -qq apache2-utils; }; } \
    >/dev/null 2>&1 || echo "apache2-utils not installed: the htpasswd tests will skip" >&2
fi
echo "== pytest"
$BIN/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the suite itself" >&2
  exit 1
fi
exit "$rc"

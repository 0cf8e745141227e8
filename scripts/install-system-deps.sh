#!/bin/sh
# Debian packages the test suite needs: Chromium for the portal's browser tests.
# Idempotent and quick when everything is there; installs only when run as root.
set -eu
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install-system-deps.sh: /usr/bin/chromium is missing;" >&2
  echo "  run 'sudo apt-get install chromium' (or this script as root) for the browser tests" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || {
  apt-get update -q >/dev/null
  apt-get install -y -q chromium >/dev/null
}
/usr/bin/chromium --version >/dev/null 2>&1 || true
echo "installed chromium"

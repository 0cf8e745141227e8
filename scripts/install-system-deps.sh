#!/bin/sh
# Debian packages the test suite needs: Chromium for the portal's browser tests.
# Idempotent and quick when everything is there; installs only when run as root.
set -eu
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/install-system-deps.sh: /usr/bin/chromium is missing and this is not root;" >&2
  echo "  the browser tests will be skipped: 'sudo apt-get install chromium' to run them" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || {
  apt-get update -q >/dev/null
  apt-get install -y -q chromium >/dev/null
}
/usr/bin/chromium --version >/dev/null 2>&1 || true
echo "installed chromium"

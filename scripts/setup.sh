#!/bin/sh
# Installs everything imagegate and its tests need, on a fresh Debian or Ubuntu machine:
# the Debian packages the tests start for real (redis-server; chromium for the page's browser
# tests), only when missing, then imagegate itself with its test tools (editable).
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi
python3 -m pip install -e '.[test]'

#!/usr/bin/env bash
# Install what the browser tests and `make video` need: Debian's chromium, a font, ffmpeg (video
# encoding). Called by `make test`/`make video` (through the Makefile) and by .ci/run.
# Never fails the build for want of rights: without root or passwordless sudo it prints the one
# command to run and exits 0. `--require` (CI) makes a failed install an error instead.
set -uo pipefail
PACKAGES="chromium fonts-dejavu-core ffmpeg"
HINT="sudo .ci/chromium.sh"
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "chromium.sh: the browser tests and make video need$missing; install them with: $HINT"
  [ "${1:-}" = "--require" ] && exit 1
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $PACKAGES >/dev/null; then
  echo "chromium.sh: installed $PACKAGES"
else
  echo "chromium.sh: apt-get could not install $PACKAGES; the browser tests will be skipped (retry: $HINT)"
  [ "${1:-}" = "--require" ] && exit 1
fi
exit 0

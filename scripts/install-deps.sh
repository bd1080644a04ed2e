#!/bin/sh
# Install what building and testing mmpipe needs on Debian 12 (run as root, or with sudo available).
set -eu
PKGS="build-essential autoconf automake libtool pkg-config \
 libltdl-dev libconfig-dev libhdf5-dev zlib1g-dev libopenblas-dev libjansson-dev \
 libpng-dev libjpeg-dev libutf8proc-dev libzip-dev \
 libopenmpi-dev openmpi-bin \
 libjpeg62-turbo-dev \
 clang libclang-rt-14-dev"
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
missing=
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "install-deps: all build dependencies present"
  exit 0
fi
echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing

#!/usr/bin/env bash
# Idempotent setup: OS packages (as root, only the missing ones) and the controller venv.
# The venv is rebuilt only when requirements.txt changes (stamp holds its checksum).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# Controller packages: nspawn test hosts, the rootfs builder, nginx for `nginx -t` of rendered
# templates, wrk for load, nc for the ssh ProxyCommand into the hosts' network namespace.
APT_PACKAGES=(systemd-container debootstrap nginx-light wrk netcat-openbsd iproute2 openssh-client rsync curl procps)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing OS packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps package installs from starting services (nginx) on the controller.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$want" ]; then
  exit 0
fi
PY=$(scripts/find-python.sh)
echo "setup: building $VENV with $PY ($("$PY" -V))"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
mkdir -p build
if ! { "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt &&
       "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e sample_app; } > build/setup-pip.log 2>&1; then
  cat build/setup-pip.log >&2
  echo "error: pip install failed (log above, also in build/setup-pip.log)" >&2
  exit 1
fi
echo "$want" > "$VENV/.stamp"

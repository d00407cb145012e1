#!/usr/bin/env bash
# Installs the Debian packages the test-suite drives for real: ClamAV, a dbus-daemon, systemd-analyze,
# AppArmor's parser, openssl, nats-server, Debian's python3-seccomp and python3-msgpack, and the Debian packaging tool-chain. Only as root; otherwise the tests that need them skip with a reason.
set -u
need=()
command -v clamscan     >/dev/null 2>&1 || need+=(clamav)
command -v clamd        >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || need+=(clamav-daemon)
command -v clamdscan    >/dev/null 2>&1 || need+=(clamdscan)
command -v dbus-daemon  >/dev/null 2>&1 || need+=(dbus-daemon)
command -v dbus-monitor >/dev/null 2>&1 || need+=(dbus-bin)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v setpriv      >/dev/null 2>&1 || need+=(util-linux)
command -v dpkg-buildpackage >/dev/null 2>&1 || need+=(dpkg-dev)
command -v dh >/dev/null 2>&1 || need+=(debhelper dh-python python3-all pybuild-plugin-pyproject)
command -v lintian      >/dev/null 2>&1 || need+=(lintian)
command -v openssl      >/dev/null 2>&1 || need+=(openssl)   # a throw-away CA for the HTTPS webhook tests
command -v nats-server  >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)  # fleet: JetStream
command -v yara         >/dev/null 2>&1 || need+=(yara)      # real YARA output for sdd-ingest --format yara
command -v cc           >/dev/null 2>&1 || need+=(gcc libc6-dev)  # builds the ClamAV hook (make hook)
command -v apparmor_parser >/dev/null 2>&1 || [ -x /sbin/apparmor_parser ] || need+=(apparmor)
# Debian's own python3 runs the unit-sandbox test (seccomp) and sddctl as clamav, who cannot read the venv.
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || need+=(python3-seccomp)
/usr/bin/python3 -c 'import msgpack' >/dev/null 2>&1 || need+=(python3-msgpack)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: not root, so not installing: ${need[*]} (tests that need them will skip)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || {
  echo "system-deps: apt-get install failed for ${need[*]}" >&2; exit 1; }

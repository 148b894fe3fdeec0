#!/usr/bin/env bash
# The Debian package: builds with cargo-deb, installs with dpkg, puts every file in place with the right owner and
# mode, creates the system user, keeps a locally edited config across an upgrade, and purges cleanly.
# Needs root and cargo-deb (.ci/run installs it). Prints "deb: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0 fail=0
ok() { echo "ok   - $1"; pass=$((pass + 1)); }
bad() { echo "FAIL - $1"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
finish() { echo "deb: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

if ! command -v cargo-deb >/dev/null; then
  if [ "${CI:-}" = true ]; then bad "cargo-deb is installed (CI=true)"; finish; fi
  echo "SKIPPED: cargo-deb is not installed (cargo install cargo-deb)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then bad "running as root (CI=true)"; finish; fi
  echo "SKIPPED: installing a package needs root"; exit 0
fi

# A debug build is enough to test the packaging, and CI already has it.
deb=$(cargo deb --profile dev --fast 2>/dev/null | tail -n 1)
check "cargo deb builds a package" test -f "$deb"
dpkg -P ponte >/dev/null 2>&1 || true

check "dpkg -i installs it" dpkg -i "$deb"
check "binary in /usr/bin" test -x /usr/bin/ponte
check "unit in /usr/lib/systemd/system" test -f /usr/lib/systemd/system/ponte.service
check "system user ponte exists" getent passwd ponte
check "config is root:ponte 0640" test "$(stat -c '%U:%G %a' /etc/ponte/ponte.toml)" = "root:ponte 640"
check "config is a conffile" grep -qx /etc/ponte/ponte.toml /var/lib/dpkg/info/ponte.conffiles
check "shipped config is valid" /usr/bin/ponte check-config /etc/ponte/ponte.toml
check "the service user can read its config" runuser -u ponte -- /usr/bin/ponte check-config /etc/ponte/ponte.toml
if command -v systemd-analyze >/dev/null; then
  check "installed unit verifies" systemd-analyze verify /usr/lib/systemd/system/ponte.service
fi
check "docs installed" test -f /usr/share/doc/ponte/config.example.toml

# Upgrade (reinstall) keeps the owner's edits to the conffile.
printf '\n# local edit\n' >> /etc/ponte/ponte.toml
check "upgrade installs over itself" dpkg -i --force-confold "$deb"
check "local config edit survives the upgrade" grep -q "# local edit" /etc/ponte/ponte.toml

check "dpkg -P purges it" dpkg -P ponte
check "binary gone after purge" test ! -e /usr/bin/ponte
check "config gone after purge" test ! -e /etc/ponte/ponte.toml
finish

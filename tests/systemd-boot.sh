#!/usr/bin/env bash
# The .deb under a real systemd: boots a throw-away container (systemd-nspawn on a copy-on-write overlay of this
# machine's root, private network, nothing written to the host), then `dpkg -i` → `systemctl start ponte` → the
# service runs as its own user under every hardening directive of deploy/ponte.service, answers HTTP and STUN,
# survives `systemctl reload`, is restarted by systemd after a crash, stops cleanly, and is removed by `dpkg -P`.
# Needs root, systemd-nspawn (Debian `systemd-container`), cargo-deb and coturn's turnutils_stunclient
# (.ci/run installs them). Prints "systemd-boot: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0 fail=0
ok() { echo "ok   - $1"; pass=$((pass + 1)); }
bad() { echo "FAIL - $1"; fail=$((fail + 1)); }
check() {
  local what=$1 out; shift
  if out=$("$@" 2>&1); then ok "$what"; else bad "$what"; [ -n "$out" ] && tail -n 5 <<<"$out" | sed 's/^/       /'; fi
}
finish() { echo "systemd-boot: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }
need() {
  if ! command -v "$1" >/dev/null; then
    if [ "${CI:-}" = true ]; then bad "$1 is installed (CI=true)"; finish; fi
    echo "SKIPPED: $1 is not installed ($2)"; exit 0
  fi
}
need systemd-nspawn "apt-get install systemd-container"
need cargo-deb "cargo install cargo-deb"
need turnutils_stunclient "apt-get install coturn"
if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then bad "running as root (CI=true)"; finish; fi
  echo "SKIPPED: booting a container needs root"; exit 0
fi

deb=$(cargo deb --profile dev --fast 2>/dev/null | tail -n 1)
check "cargo deb builds a package" test -f "$deb"
[ -f "$deb" ] || finish

# The container's root: this machine's root filesystem as the read-only lower layer of an overlay whose upper
# layer lives on a tmpfs, so installing the package inside never touches the host.
T=$(mktemp -d /run/ponte-boot.XXXXXX)
leader="" nspawn_pid=""
cleanup() {
  if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
    nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
  fi
  if [ -n "$nspawn_pid" ]; then
    kill -TERM "$nspawn_pid" 2>/dev/null && sleep 1
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  umount "$T/root" 2>/dev/null || umount -l "$T/root" 2>/dev/null || true
  umount "$T" 2>/dev/null || umount -l "$T" 2>/dev/null || true
  rmdir "$T" 2>/dev/null || true
}
trap cleanup EXIT
mount -t tmpfs -o size=512m tmpfs "$T"
mkdir -p "$T/upper" "$T/work" "$T/root"
if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"; then
  bad "overlay of / for the container root"; finish
fi
# A package left installed on the host (by hand) would hide what dpkg -i does in the container.
rm -rf "$T/root/etc/ponte" "$T/root/usr/bin/ponte" "$T/root/usr/lib/systemd/system/ponte.service"
cp "$deb" "$T/root/root/ponte.deb"  # not /tmp: the container mounts a fresh tmpfs there

# --keep-unit/--register=no: no systemd or D-Bus on the host is needed; --private-network: only a loopback
# inside, so the default ports cannot collide with anything on the host.
machine_id=$(tr -d - < /proc/sys/kernel/random/uuid)
systemd-nspawn -D "$T/root" --machine="ponte-boot-$$" --uuid="$machine_id" --register=no --keep-unit \
  --link-journal=no --private-network -b --console=pipe >"$T/console.log" 2>&1 &
nspawn_pid=$!
# The container's PID 1 is the process named systemd among nspawn's children (or, while it sets up, grandchildren).
for _ in $(seq 1 100); do
  for p in $(pgrep -P "$nspawn_pid"); do
    if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd ]; then leader=$p; fi
    for q in $(pgrep -P "$p"); do
      if [ "$(cat /proc/"$q"/comm 2>/dev/null)" = systemd ]; then leader=$q; fi
    done
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
inside() { nsenter -t "$leader" -a "$@"; }
state=""
if [ -n "$leader" ]; then
  for _ in $(seq 1 120); do
    state=$(inside systemctl is-system-running 2>/dev/null)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
  done
fi
case "$state" in
  running | degraded) ok "container booted systemd ($state)" ;;
  *) bad "container booted systemd (state: '${state:-none}')"; cat "$T/console.log"; finish ;;
esac

check "dpkg -i installs the package" inside dpkg -i /root/ponte.deb
check "the unit is enabled by the package" test "$(inside systemctl is-enabled ponte)" = enabled
check "the service is not started by dpkg -i (owner edits the config first)" \
  test "$(inside systemctl is-active ponte)" = inactive
check "systemctl start ponte (Type=notify: returns after READY=1)" inside timeout 60 systemctl start ponte
check "ponte is active" test "$(inside systemctl is-active ponte)" = active
main_pid=$(inside systemctl show -P MainPID ponte)
check "it runs as the system user ponte" test "$(inside ps -o user= -p "${main_pid:-1}" | tr -d ' ')" = ponte
health=$(inside bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null)
check "/healthz answers 200 under the hardened unit" grep -q "^HTTP/1.[01] 200" <<<"$health"
page=$(inside bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null)
check "the embedded web client is served" grep -q "<html" <<<"$page"
check "STUN Binding answered on 3478/udp" inside timeout 10 turnutils_stunclient 127.0.0.1
check "the journal has the listening lines" bash -c "nsenter -t $leader -a journalctl -u ponte --no-pager | grep -q 'STUN/TURN listening'"

check "the start-up relay self-test passed" \
  bash -c "nsenter -t $leader -a journalctl -u ponte --no-pager | grep -q 'TURN self-test passed'"
doctor=$(inside ponte doctor -c /etc/ponte/ponte.toml 2>&1); doctor_rc=$?
check "ponte doctor passes against the running service (warnings allowed)" test "$doctor_rc" = 0
check "ponte doctor finds the service's ports in use by the running ponte" grep -q "in use by the running ponte" <<<"$doctor"
check "ponte doctor's relay self-test passes against the service" grep -Eq "^ok +relay +self-test against the running ponte passed" <<<"$doctor"
[ "$doctor_rc" = 0 ] || sed 's/^/       /' <<<"$doctor"

check "systemctl reload ponte (SIGHUP)" inside timeout 30 systemctl reload ponte
check "still active after the reload, same process" \
  test "$(inside systemctl is-active ponte)/$(inside systemctl show -P MainPID ponte)" = "active/$main_pid"
check "the reload is in the journal" bash -c "nsenter -t $leader -a journalctl -u ponte --no-pager | grep -q 'configuration reloaded'"

# Restart=on-failure: a crash brings it back (RestartSec=2s).
inside systemctl kill -s KILL ponte >/dev/null 2>&1
restarted=""
for _ in $(seq 1 40); do
  pid=$(inside systemctl show -P MainPID ponte)
  if [ "$(inside systemctl is-active ponte)" = active ] && [ -n "$pid" ] && [ "$pid" != 0 ] && [ "$pid" != "$main_pid" ]; then
    restarted=yes; break
  fi
  sleep 0.5
done
check "systemd restarts ponte after kill -9" test "$restarted" = yes

check "systemctl stop ponte" inside timeout 30 systemctl stop ponte
check "stopped cleanly (SIGTERM → exit 0, no failure)" \
  test "$(inside systemctl show -P Result ponte)/$(inside systemctl is-active ponte)" = "success/inactive"

check "the journal shows the graceful shutdown" \
  bash -c "nsenter -t $leader -a journalctl -u ponte --no-pager | grep -q 'SIGTERM received: shutting down gracefully'"
check "nothing went wrong while stopping" \
  bash -c "! nsenter -t $leader -a journalctl -u ponte --no-pager | grep -Eq 'error while stopping|did not finish'"
exposure=$(inside systemd-analyze security ponte 2>/dev/null | sed -n 's/.*Overall exposure level for ponte.service: \([0-9.]*\).*/\1/p')
echo "     systemd-analyze security: exposure ${exposure:-?} (0 = fully locked down, 10 = unprotected)"
check "systemd-analyze security rates the unit below 2.5 (OK)" awk -v e="${exposure:-10}" 'BEGIN { exit !(e < 2.5) }'
if [ "${PONTE_BOOT_JOURNAL:-}" = 1 ]; then inside journalctl -u ponte --no-pager; fi

check "dpkg -P removes it" inside dpkg -P ponte
check "unit gone after purge" test "$(inside systemctl is-enabled ponte 2>/dev/null)" != enabled
if [ "$fail" -gt 0 ]; then
  echo "--- journal of ponte in the container ---"
  inside journalctl -u ponte --no-pager | tail -n 40
fi
finish

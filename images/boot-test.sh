#!/usr/bin/env bash
# Boot test: the image's kernel, initrd and disk under qemu-system-aarch64 -M virt (software
# emulation: the Pi's own firmware cannot be emulated), with user networking so the guest
# reaches this host's S3 server and MQTT broker at 10.0.2.2. Three first boots of fresh copies:
#   1. a malformed apiary.toml: the node stays stopped, the reason is on the console and in
#      apiary-error.txt on the boot partition, and the board is still reachable over SSH;
#   2. a non-default apiary.toml (S3 meadow, external broker, a route, host name, SSH key,
#      Wi-Fi): the node's heartbeat appears in the host's bucket, MQTT messages published on
#      the host land in a frame, and SQL over them answers both from the host (another node
#      on the bucket) and through the guest's HTTP API with the token the first boot wrote
#      to the boot partition; over SSH the settings are in place and the node is the
#      installed apiary package; a release published on the host (signed, into the bucket)
#      is installed by the guest, whose heartbeat then carries its version, and a broken one
#      (its binary exits at start) is rolled back by itself while the node keeps ingesting;
#      after power-off the heartbeat is gone and the root partition has grown;
#   3. the image's own apiary.toml: the node's MQTT listener on 0.0.0.0:1883 refuses anonymous
#      publishers and takes the device credential the first boot wrote to the boot partition,
#      and mqtts on 8883 serves the certificate whose fingerprint is written there; the
#      firewall admits SSH and the configured ports only (port 9999 answers on loopback only);
#      a publisher on the host sends QoS 1 messages while qemu is SIGKILLed three times at
#      random moments (a power cut: the guest's RAM and page cache vanish) and booted again;
#      every acknowledged message is in the frame exactly once, and a topic of a hive outside
#      the image's ingest.default_route_hives made no frame.
#   images/boot-test.sh [image]     (default: images/build.sh's raw image)
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
. "$(dirname "$0")/layout.sh"
img="${1:-${APIARY_IMAGE_DIR:-$CARGO_TARGET_DIR/images}/apiary-pi-arm64.img}"
host_bin="${APIARY_BIN:-$CARGO_TARGET_DIR/debug/apiary}"
boot_timeout="${APIARY_BOOT_TIMEOUT:-900}"   # seconds; emulated, on a busy 2-core builder
[ -f "$img" ] || { echo "no image at $img: run images/build.sh" >&2; exit 2; }
[ -x "$host_bin" ] || cargo build -q -p apiary --bin apiary
need_commands qemu-system-aarch64:qemu-system-arm dpkg-deb:dpkg curl:curl mcopy:mtools sfdisk:fdisk \
  ssh:openssh-client mosquitto_pub:mosquitto-clients

work=$(mktemp -d "${TMPDIR:-/tmp}/apiary-boot-test.XXXXXX")
qemu_pid=
publisher=   # boot 3's background publisher
servers=()   # the S3 server and broker this script started (scripts/test shares its own)
cleanup() {
  [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
  [ -z "$publisher" ] || kill "$publisher" 2>/dev/null || true
  [ ${#servers[@]} -eq 0 ] || kill "${servers[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${APIARY_TEST_S3_ENDPOINT:-}" ]; then
  eval "$("$REPO/scripts/s3-server")"; servers+=("$APIARY_S3_PID")
fi
if [ -z "${APIARY_TEST_MQTT_URL:-}" ]; then
  eval "$("$REPO/scripts/mqtt-broker")"; servers+=("$APIARY_MQTT_PID")
fi
s3_port=${APIARY_TEST_S3_ENDPOINT##*:}
mqtt_port=${APIARY_TEST_MQTT_URL##*:}
bucket=${APIARY_TEST_S3_BUCKET:-apiary-test}

fail_hook=   # a command that prints what helps explain a failure (boot 3's missing messages)
fail() {
  echo "boot test: $*" >&2
  [ -z "$fail_hook" ] || { local hook=$fail_hook; fail_hook=; $hook >&2 || true; }
  [ ! -f "$work/console.log" ] || { echo "--- guest console (last 60 lines):" >&2; tail -60 "$work/console.log" >&2; }
  exit 1
}
# Poll until a command succeeds (deadline in seconds).
until_ok() { # until_ok <seconds> <what> <command...>
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt "$deadline" ] || fail "timed out waiting for: $what"
    [ -z "$qemu_pid" ] || kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited while waiting for: $what"
    sleep 2
  done
}
on_console() { grep -aqF -- "$1" "$work/console.log"; }

# The kernel, initrd and command line as the Pi firmware would take them from the boot
# partition (config.txt's kernel= and initramfs, cmdline.txt), the console moved to the
# virt machine's serial port.
mcopy -n -i "$(boot_of "$img")" ::config.txt ::cmdline.txt "$work/"
kernel=$(config_kernel "$work/config.txt")
initrd=$(config_initrd "$work/config.txt")
mcopy -n -i "$(boot_of "$img")" "::$kernel" "$work/vmlinuz"
mcopy -n -i "$(boot_of "$img")" "::$initrd" "$work/initrd.img"
cmdline="$(sed 's/console=[^ ]*//g' "$work/cmdline.txt" | tr -s ' ') console=ttyAMA0"

# A fresh copy of the image with this apiary.toml, 512 MiB larger for the root to grow into.
prepare() { # prepare <disk> <apiary.toml>
  cp --sparse=always "$img" "$1"
  truncate -s +512M "$1"
  mcopy -o -i "$(boot_of "$1")" "$2" ::apiary.toml
}

mqtt_fwd=$(free_port)   # the guest's MQTT listeners, the same ports on the host at every boot
mqtts_fwd=$(free_port)
probe_fwd=$(free_port)  # the guest's port 9999, which no config names (the firewall test)
boot() { # boot <disk>
  http_port=$(free_port); ssh_port=$(free_port)
  : > "$work/console.log"
  qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -display none -no-reboot \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
    -append "$cmdline" \
    -drive "if=none,id=disk,format=raw,file=$1" -device virtio-blk-pci,drive=disk \
    -netdev "user,id=net,hostfwd=tcp:127.0.0.1:$http_port-:8080,hostfwd=tcp:127.0.0.1:$ssh_port-:22,hostfwd=tcp:127.0.0.1:$mqtt_fwd-:1883,hostfwd=tcp:127.0.0.1:$mqtts_fwd-:8883,hostfwd=tcp:127.0.0.1:$probe_fwd-:9999" \
    -device virtio-net-pci,netdev=net,romfile= -device virtio-rng-pci \
    -serial "file:$work/console.log" -monitor "unix:$work/monitor,server,nowait" &
  qemu_pid=$!
}

# Power off through the emulated power button (pressed again every 10 s: logind ignores it
# for a while after boot); stop qemu if the guest does not get there in 90 s.
shutdown() {
  local deadline=$((SECONDS + 90)) next=0
  while kill -0 "$qemu_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
    if [ $SECONDS -ge $next ]; then
      python3 - "$work/monitor" <<'PY' || true
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"system_powerdown\n")
PY
      next=$((SECONDS + 10))
    fi
    sleep 1
  done
  if kill "$qemu_pid" 2>/dev/null; then echo "(the guest did not power off in 90 s: stopped)"; fi
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
}

# On the board, over SSH as root with the key from apiary.toml (boots 2 and 3).
on_board() {
  ssh -i "$work/id_boot_test" -p "$ssh_port" -o BatchMode=yes -o ConnectTimeout=20 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 "$@"
}
ssh_banner() { # sshd answers with its version line: host keys exist and it runs
  python3 - "$ssh_port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
sys.exit(0 if s.recv(64).startswith(b"SSH-2.0-OpenSSH") else 1)
PY
}

# --- 1. A malformed apiary.toml --------------------------------------------------------------
echo "== boot 1: a malformed apiary.toml"
cat > "$work/bad.toml" <<'EOF'
[meadow]
uri = "s3://apiary-test/never"
endpont = "http://10.0.2.2:9000"
EOF
prepare "$work/bad.img" "$work/bad.toml"
boot "$work/bad.img"
start=$SECONDS
until_ok "$boot_timeout" "apiary-boot's refusal on the console" on_console "apiary.toml was not accepted"
on_console "endpont" || fail "the console does not name the unknown key"
until_ok 300 "SSH on the board with the refused config" ssh_banner
until_ok 300 "a login prompt on the console" on_console "login:"
echo "refused in $((SECONDS - start)) s; SSH and the console answer"
shutdown
error=$(mtype -i "$(boot_of "$work/bad.img")" ::apiary-error.txt) || fail "no apiary-error.txt on the boot partition"
grep -qF "endpont" <<<"$error" || fail "apiary-error.txt does not say what is wrong: $error"
grep -a "Dependency failed for" "$work/console.log" | grep -q "apiary.service.*Apiary node" \
  || fail "systemd did not report apiary.service held back by the failed apiary-boot"
rm -f "$work/bad.img"

# --- 2. A non-default apiary.toml ------------------------------------------------------------
echo "== boot 2: an S3 meadow, an external broker, a route and a host name"
prefix="boot-test-$(date +%s)-$$"
ssh-keygen -q -t ed25519 -N "" -C boot-test -f "$work/id_boot_test"
# The release signing key stays here; the board trusts its public half.
release_key=$("$host_bin" release keygen "$work/release.key" | sed -n 's/^trusted_keys = \["\(.*\)"\]$/\1/p')
[ -n "$release_key" ] || fail "apiary release keygen printed no public key"
cat > "$work/good.toml" <<EOF
[device]
hostname = "hive-boot-test"
ssh_authorized_keys = ["$(cat "$work/id_boot_test.pub")"]

[device.wifi]
ssid = "Bee Net"
psk = "pollen-2026"
country = "GB"

[meadow]
uri = "s3://$bucket/$prefix"
[meadow.options]
endpoint = "http://10.0.2.2:$s3_port"
access_key_id = "test"
secret_access_key = "test"
region = "us-east-1"

[mqtt]
url = "mqtt://10.0.2.2:$mqtt_port"

[ingest]
max_latency = "1s"

[[ingest.routes]]
topic = "boottest/+/climate"
frame = "lab.sensors.climate"
columns = { device = "{1}" }

[swarm]
heartbeat_interval = "2s"

[http]
listen = "0.0.0.0:8080"

[update]
channel = "stable"
trusted_keys = ["$release_key"]
check_interval = "3s"
ready_timeout = "60s"
EOF
prepare "$work/good.img" "$work/good.toml"
root_sectors() { sfdisk -d "$1" | awk -F'size= *' '/img2/ {split($2, a, ","); print a[1]}'; }
before=$(root_sectors "$work/good.img")
boot "$work/good.img"
start=$SECONDS
export AWS_ENDPOINT_URL="$APIARY_TEST_S3_ENDPOINT"
host() { APIARY_LOG=warn "$host_bin" --storage "s3://$bucket/$prefix" --state-dir "$work/host-state" "$@"; }
beating() { host swarm | grep -q '"name": *"hive-boot-test"'; }
until_ok "$boot_timeout" "the guest node's heartbeat in the host's bucket" beating
echo "node up, heartbeat in the bucket after $((SECONDS - start)) s"
# systemd says "Started" for a Type=notify unit only once the node sent READY=1.
node_ready() { grep -a "Started" "$work/console.log" | grep -q "apiary.service.* - Apiary node"; }
until_ok 120 "systemd: apiary.service started (READY=1)" node_ready
until_ok 120 "the guest's HTTP API" curl -sf "http://127.0.0.1:$http_port/healthz"

publish_climate() { # publish_climate <i>...: reading i of a sensor (QoS 1, through the host's broker)
  for i in "$@"; do
    mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "boottest/sensor-$((i % 2))/climate" \
      -m "{\"temp\": $((20 + i)).5, \"humidity\": $((40 + i))}"
  done
}
landed() { [ "$(host sql --format csv 'SELECT count(*) AS n FROM lab.sensors.climate' | tail -1)" = "$1" ]; }
publish_climate 1 2 3 4 5
until_ok 300 "5 MQTT messages in frame lab.sensors.climate" landed 5
out=$(host sql --format csv "SELECT device, count(*) AS n, max(temp) AS t FROM lab.sensors.climate GROUP BY device ORDER BY device")
[ "$out" = "$(printf 'device,n,t\nsensor-0,2,24.5\nsensor-1,3,25.5')" ] || fail "SQL from the host answered: $out"
echo "MQTT -> frame -> SQL from the host: ok"

token=$(mtype -i "$(boot_of "$work/good.img")" ::apiary-token.txt | tr -d '\r\n')
[ ${#token} -eq 64 ] || fail "apiary-token.txt holds no token: '$token'"
out=$("$host_bin" --remote "http://127.0.0.1:$http_port" --token "$token" sql --format csv \
  "SELECT sum(humidity) AS h FROM lab.sensors.climate")
[ "$(tail -1 <<<"$out")" = 215 ] || fail "SQL through the guest's HTTP API answered: $out"
curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong-token-0123456789" \
  "http://127.0.0.1:$http_port/v1/status" | grep -qx 401 || fail "a wrong token was not refused"
echo "SQL through the guest's HTTP API with the first boot's token: ok"
# The bees' budgets are bees.usable_fraction (0.7) of the unit's MemoryMax=75% of 1 GiB, not
# of the board's memory.
budget=$("$host_bin" --remote "http://127.0.0.1:$http_port" --token "$token" bees \
  | python3 -c 'import json, sys; print(sum(b["memory_budget"] for b in json.load(sys.stdin)) >> 20)')
[ "$budget" -le $((1024 * 3 / 4 * 7 / 10)) ] || fail "the bees' budgets ($budget MiB) exceed the unit's MemoryMax"
echo "bees' memory budgets: $budget MiB in all, under MemoryMax"
until_ok 120 "SSH login with the key from apiary.toml" on_board true
[ "$(on_board systemctl is-active apiary.service)" = active ] || fail "apiary.service is not active"
# (Quoted for the board's shell, which reads the command again.)
[ "$(on_board "dpkg-query -W -f='\${Status}' apiary")" = "install ok installed" ] \
  || fail "the node is not the installed apiary package: $(on_board dpkg -l apiary 2>&1 | tail -1)"
[ "$(on_board cat /proc/sys/kernel/hostname)" = hive-boot-test ] || fail "the host name is not hive-boot-test"
wpa=$(on_board cat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf) || fail "no Wi-Fi configuration written"
grep -qx 'country=GB' <<<"$wpa" && grep -q 'ssid="Bee Net"' <<<"$wpa" \
  && grep -qE '^[[:space:]]*psk=[0-9a-f]{64}$' <<<"$wpa" && ! grep -q pollen <<<"$wpa" \
  || fail "the Wi-Fi configuration is not the hashed key for Bee Net: $wpa"
# The node logs to the journal natively (fields of its own), not as captured stderr lines.
journal=$(on_board "journalctl -u apiary.service -o json 'MESSAGE=apiary node ready'")
grep -q 'NODE_ID"' <<<"$journal" || fail "no structured 'apiary node ready' entry in the journal: $journal"
echo "on the board: node active, host name, Wi-Fi (hashed key), SSH key, journal fields: ok"

# Updates through the bucket: the installed package repackaged as the next version (a good
# release), then as the one after with a binary that exits at start (a broken one).
installed=$(on_board "dpkg-query -W -f='\${Version}' apiary")
on_board cat "/var/lib/apiary-update/apiary_${installed}_arm64.deb" > "$work/installed.deb" \
  || fail "the board keeps no package of the installed version to go back to"
repack() { # repack <version> [broken]: prints the package's path
  local dir="$work/repack-$1"
  dpkg-deb -R "$work/installed.deb" "$dir"
  sed -i "s/^Version: .*/Version: $1/" "$dir/DEBIAN/control"
  echo "$1" > "$dir/usr/lib/apiary/version"
  [ "${2:-}" != broken ] || printf '#!/bin/sh\necho "a broken release" >&2\nexit 1\n' > "$dir/usr/bin/apiary"
  dpkg-deb --root-owner-group -Zxz -z1 --build "$dir" "$work/apiary_$1_arm64.deb" >/dev/null
  rm -rf "$dir"
  echo "$work/apiary_$1_arm64.deb"
}
guest_version() { # the version in the guest's heartbeat while it is alive
  host swarm | python3 -c 'import json, sys
print(next((n["version"] for n in json.load(sys.stdin)["nodes"] if n["name"] == "hive-boot-test" and n["state"] == "alive"), ""))'
}
beats_as() { [ "$(guest_version)" = "$1" ]; }
helper_says() { on_board cat /var/lib/apiary-update/state.json | grep -qF "$1"; }
beats_as "$installed" || fail "the heartbeat does not carry the package's version $installed: $(guest_version)"
next="$installed.1"
host release publish "$(repack "$next")" --key "$work/release.key" --channel stable
start=$SECONDS
until_ok 600 "the guest's heartbeat on release $next" beats_as "$next"
[ "$(on_board "dpkg-query -W -f='\${Version}' apiary")" = "$next" ] || fail "dpkg does not have $next installed"
until_ok 120 "the update helper's record of $next" helper_says "installed $next"
echo "release $next published on the host: installed by the guest, heartbeat on it after $((SECONDS - start)) s"
broken="$installed.2"
host release publish "$(repack "$broken" broken)" --key "$work/release.key" --channel stable
start=$SECONDS
until_ok 600 "the rollback of the broken release $broken" helper_says "rolled $broken back to $next"
until_ok 300 "the guest's heartbeat on $next again" beats_as "$next"
[ "$(on_board "dpkg-query -W -f='\${Version}' apiary")" = "$next" ] || fail "dpkg does not have $next back"
update_state() { "$host_bin" --remote "http://127.0.0.1:$http_port" --token "$token" status \
  | python3 -c 'import json, sys; print((json.load(sys.stdin).get("update") or {}).get("state", ""))'; }
says_rolled_back() { update_state | grep -qF "$broken was rolled back here"; }
until_ok 120 "the node's status on the rolled-back release" says_rolled_back
publish_climate 6 7 8 9 10
until_ok 300 "5 more MQTT messages after the rollback" landed 10
echo "broken release $broken rolled back to $next in $((SECONDS - start)) s; the node kept ingesting"
shutdown
# A clean power-off stops the node through systemd (SIGTERM), and a stopping node takes its
# heartbeat out of the bucket.
! beating || fail "the guest's heartbeat is still in the bucket after power-off"
after=$(root_sectors "$work/good.img")
[ "$after" -gt "$before" ] || fail "the root partition did not grow ($before sectors before, $after after)"
on_console "apiary-boot: host name hive-boot-test" || fail "the host name was not applied"
echo "root partition grown from $((before / 2048)) to $((after / 2048)) MiB"
rm -f "$work/good.img"

# --- 3. The image's own apiary.toml: the MQTT listener, its credential, power cuts -----------
echo "== boot 3: the default apiary.toml; QoS 1 publishing through three power cuts"
mcopy -n -i "$(boot_of "$img")" ::apiary.toml "$work/default.toml"
# Only an SSH key added, to read the node's journal if something is missing.
sed -i "/^\[device\]/a ssh_authorized_keys = [\"$(cat "$work/id_boot_test.pub")\"]" "$work/default.toml"
grep -q '^ssh_authorized_keys' "$work/default.toml" || fail "no [device] section in the image's apiary.toml"
prepare "$work/default.img" "$work/default.toml"
boot "$work/default.img"
start=$SECONDS
until_ok "$boot_timeout" "the guest's HTTP API" curl -sf "http://127.0.0.1:$http_port/healthz"
echo "node up after $((SECONDS - start)) s"
credential() { mtype -i "$(boot_of "$work/default.img")" ::apiary-mqtt.txt | tr -d '\r'; }
until_ok 60 "apiary-mqtt.txt on the boot partition" credential
user=$(credential | sed -n 's/^user = "\(.*\)"$/\1/p')
password=$(credential | sed -n 's/^password = "\(.*\)"$/\1/p')
[ "$user" = device ] && [ ${#password} -ge 16 ] || fail "apiary-mqtt.txt holds no credential: $(credential)"
pub() { # pub <n> [credentials...]: one QoS 1 message; exit 0 once its PUBACK came
  local n=$1; shift
  timeout 20 mosquitto_pub -h 127.0.0.1 -p "$mqtt_fwd" -q 1 -i "cut-$n" "$@" \
    -t apiary/sensors/power/cuts -m "{\"n\": $n}"
}
until_ok 120 "a publish with the device credential" pub 0 -u "$user" -P "$password"
! pub -1 2>/dev/null || fail "an anonymous publisher was accepted on 0.0.0.0:1883"
! pub -2 -u "$user" -P "wrong-$password" 2>/dev/null || fail "a wrong password was accepted"
timeout 20 mosquitto_pub -h 127.0.0.1 -p "$mqtt_fwd" -q 1 -u "$user" -P "$password" \
  -t apiary/elsewhere/b/f -m '{"x": 1}' || fail "a publish to another hive was not acked"
echo "the listener refuses anonymous and wrong credentials, takes the device credential"
# mqtts: the certificate the first boot made, pinned by the fingerprint on the boot partition.
fingerprint=$(credential | sed -n 's/^mqtts_sha256 = "\(.*\)"$/\1/p')
[ -n "$fingerprint" ] || fail "apiary-mqtt.txt has no mqtts_sha256: $(credential)"
served=$(python3 - "$mqtts_fwd" "$work/mqtts.pem" <<'PY'
import hashlib, ssl, sys
pem = ssl.get_server_certificate(("127.0.0.1", int(sys.argv[1])), timeout=20)
open(sys.argv[2], "w").write(pem)
print(":".join(f"{b:02X}" for b in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest()))
PY
) || fail "no TLS certificate served on the guest's 8883"
[ "$served" = "$fingerprint" ] || fail "the mqtts certificate ($served) is not the one in apiary-mqtt.txt ($fingerprint)"
# --insecure: the certificate names the board (apiary.local), the test reaches it as 127.0.0.1.
timeout 20 mosquitto_pub -h 127.0.0.1 -p "$mqtts_fwd" --cafile "$work/mqtts.pem" --insecure -q 1 \
  -u "$user" -P "$password" -t apiary/sensors/power/tls -m '{"over": "tls"}' \
  || fail "a QoS 1 publish over mqtts with the pinned certificate was not acked"
echo "mqtts on 8883: the certificate matches the boot partition's fingerprint; a publish is acked"
# The firewall: a listener on a port apiary.toml does not name answers on the board's loopback
# but not from the network; the named ones (1883, 8883, 8080 above, and SSH) do.
until_ok 120 "SSH login on the default image" on_board true
rule=$(on_board nft list table inet apiary | grep 'tcp dport') || fail "no firewall table on the board"
[ "$(grep -o '[0-9]\+' <<<"$rule" | sort -n | tr '\n' ' ')" = "22 1883 8080 8883 " ] \
  || fail "the firewall does not admit exactly SSH and the configured ports: $rule"
on_board systemd-run --unit=probe-9999 systemd-socket-activate -l 9999 --accept --inetd cat >/dev/null
echo_on_board() { [ "$(on_board "bash -c 'exec 3<>/dev/tcp/127.0.0.1/9999; echo ping >&3; timeout 5 head -1 <&3'")" = ping ]; }
until_ok 60 "an echo service on the board's port 9999" echo_on_board
from_host=$(python3 - "$probe_fwd" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
try:
    s.sendall(b"ping\n")
    print(s.recv(16).decode().strip())
except OSError:
    pass
PY
) || true
[ -z "$from_host" ] || fail "port 9999, which apiary.toml does not name, answered from the network: $from_host"
on_board test -f /etc/systemd/dnssd/apiary-mqtt.dnssd || fail "no DNS-SD record for the MQTT listener"
echo "firewall: only SSH, 1883, 8883 and 8080 are open; port 9999 answers on loopback only; MQTT advertised over mDNS"
: > "$work/acked"
(
  n=1
  while [ -d "$work" ] && [ ! -e "$work/stop-publishing" ]; do
    if pub "$n" -u "$user" -P "$password" >/dev/null 2>&1; then echo "$n" >> "$work/acked"; fi
    n=$((n + 1))
  done
) &
publisher=$!
acked_more_than() { [ "$(wc -l < "$work/acked")" -gt "$1" ]; }
for cut in 1 2 3; do
  sleep $((5 + RANDOM % 20))
  before_cut=$(wc -l < "$work/acked")
  kill -KILL "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
  echo "power cut $cut: $before_cut messages acknowledged so far"
  boot "$work/default.img"
  until_ok "$boot_timeout" "the guest's HTTP API after power cut $cut" curl -sf "http://127.0.0.1:$http_port/healthz"
  until_ok 120 "acks again after power cut $cut" acked_more_than "$before_cut"
done
sleep 3
touch "$work/stop-publishing"; wait "$publisher"; publisher=
acked=$(sort -u "$work/acked" | wc -l)
[ "$acked" -gt 20 ] || fail "only $acked messages were acknowledged"
token=$(mtype -i "$(boot_of "$work/default.img")" ::apiary-token.txt | tr -d '\r\n')
guest_sql() { "$host_bin" --remote "http://127.0.0.1:$http_port" --token "$token" sql --format csv "$@"; }
stored_all() { guest_sql "SELECT n FROM sensors.power.cuts" | tail -n +2 | sort > "$work/stored"; \
  [ -z "$(comm -23 <(sort -u "$work/acked") <(uniq "$work/stored"))" ]; }
missing() {
  echo "acknowledged: $(sort -u "$work/acked" | wc -l), stored: $(wc -l < "$work/stored")"
  echo "acknowledged, not stored: $(comm -23 <(sort -u "$work/acked") <(uniq "$work/stored") | sort -n | head -20 | tr '\n' ' ')"
  guest_sql "SELECT count(*) FROM sensors.power.cuts" 2>&1 | tail -3
  echo "--- the node's journal (last 80 lines):"
  on_board journalctl -u apiary.service --no-pager -o cat | tail -80
}
fail_hook=missing
until_ok 120 "every acknowledged message in sensors.power.cuts" stored_all
fail_hook=
twice=$(uniq -d "$work/stored" | head -5 | tr '\n' ' ')
[ -z "$twice" ] || fail "messages stored twice after the power cuts: $twice"
echo "$acked acknowledged messages through three power cuts: each in the frame exactly once"
! guest_sql "SELECT * FROM elsewhere.b.f" >/dev/null 2>&1 \
  || fail "the default route made a frame outside ingest.default_route_hives"
echo "no frame made outside the image's default_route_hives (sensors)"
shutdown
echo "boot test passed"

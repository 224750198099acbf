#!/usr/bin/env bash
# The arm64 package in a fresh Debian trixie chroot (mmdebstrap; arm64 programs through
# qemu-user): dpkg -i installs it (the user, the config made from the template, the unit
# enabled), `apiary --version` runs, an upgrade keeps an edited config, dpkg -r and -P remove
# it and keep /var/lib/apiary and the user.
#   packaging/deb/test.sh [deb]     (default: built from the cross-built binary)
set -euo pipefail
. "$(dirname "$0")/../../scripts/env.sh"
[ "$(id -u)" = 0 ] || { echo "packaging/deb/test.sh runs as root (a chroot)" >&2; exit 2; }
need_commands mmdebstrap:mmdebstrap arch-test:arch-test dpkg-deb:dpkg
need_binfmt_aarch64
cache="$HOME/.cache/apiary/images"
mkdir -p "$cache/debs"
work=$(mktemp -d "${TMPDIR:-/tmp}/apiary-deb-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
deb=${1:-}
if [ -z "$deb" ]; then
  bin="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/appliance/apiary"
  [ -x "$bin" ] || "$REPO/scripts/cross-build.sh" aarch64-unknown-linux-gnu
  deb=$("$REPO/packaging/deb/build.sh" arm64 "$bin" "$work/debs")
fi

# A minimal trixie with systemd (the package's dependency), cached; its .debs shared with
# images/build.sh's cache.
base="$cache/deb-test-base.tar"
if [ ! -f "$base" ]; then
  echo "== mmdebstrap: a minimal Debian trixie arm64 for the package test"
  mmdebstrap --mode=root --format=tar --variant=minbase --architectures=arm64 --include=systemd \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $cache/debs /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $cache/debs" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    trixie "$base.tmp" "${APIARY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  mv "$base.tmp" "$base"
fi
root="$work/root"
mkdir "$root"
tar --numeric-owner -xpf "$base" -C "$root"
cp "$deb" "$root/tmp/apiary.deb"
in_root() { chroot "$root" "$@" 2> >(grep -v -e '/proc/ is not mounted' -e 'your invocation environment' -e 'Your mileage may vary' >&2); }
fail() { echo "package test: $*" >&2; exit 1; }

echo "== dpkg -i $(basename "$deb")"
in_root dpkg -i /tmp/apiary.deb || fail "dpkg -i failed"
[ "$(in_root dpkg-query -W -f='${Status}' apiary)" = "install ok installed" ] || fail "not installed"
version=$(in_root apiary --version) || fail "apiary --version did not run"
echo "installed: $version"
in_root getent passwd apiary | grep -q ':/var/lib/apiary:' || fail "no apiary user with home /var/lib/apiary"
[ "$(in_root stat -c '%a %U %G' /etc/apiary/apiary.toml)" = "640 root apiary" ] \
  || fail "/etc/apiary/apiary.toml is not 0640 root:apiary"
[ "$(in_root systemctl is-enabled apiary.service)" = enabled ] || fail "apiary.service is not enabled"
[ "$(in_root systemctl is-enabled apiary-update.path)" = enabled ] || fail "apiary-update.path is not enabled"
[ -x "$root/usr/lib/apiary/apiary-update" ] || fail "no update helper"
[ "$(cat "$root/usr/lib/apiary/version")" = "$(in_root dpkg-query -W -f='${Version}' apiary)" ] \
  || fail "/usr/lib/apiary/version is not the package's version"
# The packaged binary reports the package's version (what heartbeats carry); it finds itself
# through /proc.
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
in_root apiary --storage memory:// --state-dir /tmp/s status | grep -qF "\"version\": \"$(cat "$root/usr/lib/apiary/version")\"" \
  || fail "apiary status does not report the package's version"
umount "$root/proc"
for key in mqtt.listen mqtt.tls_listen http.listen; do  # unset: the defaults, on loopback
  [ -z "$(in_root apiary --config /etc/apiary/apiary.toml config get $key)" ] \
    || fail "the installed config sets $key: it should listen on loopback only"
done

echo "== an upgrade keeps an edited config"
echo '# edited' >> "$root/etc/apiary/apiary.toml"
in_root dpkg -i /tmp/apiary.deb >/dev/null || fail "reinstalling failed"
grep -q '^# edited' "$root/etc/apiary/apiary.toml" || fail "an upgrade replaced the edited config"

echo "== dpkg -r, dpkg -P: data and user kept"
install -d "$root/var/lib/apiary/meadow"
echo reading > "$root/var/lib/apiary/meadow/keep"
in_root dpkg -r apiary >/dev/null || fail "dpkg -r failed"
[ ! -e "$root/usr/bin/apiary" ] || fail "/usr/bin/apiary left after dpkg -r"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/apiary.service" ] \
  && [ ! -e "$root/etc/systemd/system/multi-user.target.wants/apiary-update.path" ] \
  || fail "apiary.service or apiary-update.path still enabled after dpkg -r"
[ -e "$root/etc/apiary/apiary.toml" ] || fail "dpkg -r removed the config (only purge should)"
in_root dpkg -P apiary >/dev/null || fail "dpkg -P failed"
[ ! -e "$root/etc/apiary/apiary.toml" ] || fail "dpkg -P left the config"
[ "$(cat "$root/var/lib/apiary/meadow/keep")" = reading ] || fail "data in /var/lib/apiary was removed"
in_root getent passwd apiary >/dev/null || fail "the apiary user was removed"
echo "package test passed: installs, runs, upgrades, removes; data kept"

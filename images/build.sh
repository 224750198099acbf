#!/usr/bin/env bash
# Build the Raspberry Pi image (Pi 4, 400, CM4 and Pi 5 from one image): Debian stable (trixie)
# arm64 with the kernel from trixie-backports, from Debian's archive alone, plus the apiary
# package, as an MBR disk with a FAT boot partition and an ext4 root.
#
#   images/build.sh            -> $APIARY_IMAGE_DIR/apiary-pi-arm64.img(.xz)
#
# Settings (environment): APIARY_AARCH64_BIN (default: scripts/cross-build.sh's output, built
# when missing), APIARY_IMAGE_DIR (default $CARGO_TARGET_DIR/images), APIARY_DEBIAN_MIRROR.
#
# Runs as root: mmdebstrap installs the arm64 packages in a chroot, their maintainer
# scripts running under qemu-user (binfmt_misc is mounted when it is not). The file
# systems are made from directories (mkfs.ext4 -d, mtools): no loop mounts. The installed
# base system is cached by its package list, the .deb files across package lists, so a
# rebuild with a new binary takes a minute.
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
. "$(dirname "$0")/layout.sh"
here="$REPO/images"
mirror="${APIARY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
out="${APIARY_IMAGE_DIR:-$CARGO_TARGET_DIR/images}"
cache="$HOME/.cache/apiary/images"
bin="${APIARY_AARCH64_BIN:-$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/appliance/apiary}"
[ "$(id -u)" = 0 ] || { echo "images/build.sh runs as root (mmdebstrap's chroot)" >&2; exit 2; }

packages=(
  systemd systemd-sysv systemd-timesyncd systemd-resolved udev dbus kmod netbase iproute2
  linux-image-arm64 initramfs-tools raspi-firmware firmware-brcm80211 fake-hwclock
  openssh-server wpasupplicant wireless-regdb ca-certificates cloud-guest-utils nftables
)

# arch-test: mmdebstrap checks with it that the foreign architecture runs (a Recommends).
need_commands mmdebstrap:mmdebstrap arch-test:arch-test mcopy:mtools mkfs.vfat:dosfstools sfdisk:fdisk \
  mkfs.ext4:e2fsprogs xz:xz-utils qemu-aarch64-static:qemu-user-static file:file
[ -x "$bin" ] || "$REPO/scripts/cross-build.sh" aarch64-unknown-linux-gnu
file -b "$bin" | grep -q 'ARM aarch64' || { echo "$bin is not an aarch64 binary" >&2; exit 2; }

need_binfmt_aarch64   # arm64 maintainer scripts run through qemu-user

mkdir -p "$cache/debs" "$out"
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The base system, cached by what goes into it.
pin="$here/rootfs/etc/apt/preferences.d/apiary-kernel.pref"
key=$( (echo "$mirror" "${packages[*]}"; sed -n '/^ *# base:begin$/,/^ *# base:end$/p' "$0"
       cat "$here/boot/raspi-firmware" "$pin") | sha256sum | cut -c1-16)
base="$cache/base-$key.tar"
if [ ! -f "$base" ]; then
  echo "== mmdebstrap: Debian trixie arm64, kernel from trixie-backports (${#packages[@]} packages and their dependencies)"
  rm -f "$base.tmp"
  # base:begin
  mmdebstrap --mode=root --format=tar --variant=minbase --architectures=arm64 \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --setup-hook='mkdir -p "$1/boot/firmware" "$1/var/cache/apt/archives" "$1/etc/apt/preferences.d"' \
    --setup-hook="cp $pin \"\$1/etc/apt/preferences.d/\"" \
    --setup-hook="sync-in $cache/debs /var/cache/apt/archives" \
    --skip=essential/unlink \
    --customize-hook="sync-out /var/cache/apt/archives $cache/debs" \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook="cp $here/boot/raspi-firmware \"\$1/etc/default/raspi-firmware\"" \
    --customize-hook='chroot "$1" env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware' \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
    trixie "$base.tmp" "deb $mirror trixie main non-free-firmware" \
    "deb $mirror trixie-backports main non-free-firmware"
  # base:end
  mv "$base.tmp" "$base"
  # Older bases of other package lists are of no more use.
  find "$cache" -maxdepth 1 -name 'base-*.tar' ! -name "base-$key.tar" -delete
fi

# 2. The root file system: the base, this repository's files, the node.
echo "== root file system"
root="$work/root"
mkdir "$root"
tar --numeric-owner -xpf "$base" -C "$root"
cp -a "$here/rootfs/." "$root/"
# The Pi 5 D0 device tree under the name its firmware looks for (the hook runs again at every
# kernel upgrade on the board).
chroot "$root" env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z60-apiary-pi5-d0
# The node from its Debian package, so dpkg owns it (and an update replaces it cleanly).
deb=$("$REPO/packaging/deb/build.sh" arm64 "$bin" "$work/deb")
cp "$deb" "$root/tmp/apiary.deb"
chroot "$root" dpkg -i /tmp/apiary.deb >/dev/null
rm "$root/tmp/apiary.deb"
# The package kept for the update helper to go back to (docs/updates.md).
install -d -m 0755 "$root/var/lib/apiary-update"
cp "$deb" "$root/var/lib/apiary-update/"
echo apiary > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tapiary\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"   # made on first boot, so each board has its own
systemctl --root="$root" enable apiary.service apiary-update.path apiary-boot.service systemd-networkd.service \
  systemd-resolved.service systemd-timesyncd.service ssh.service >/dev/null 2>&1
# wpa_supplicant@wlan0 serves the configured Wi-Fi; the D-Bus instance would only sit in memory.
systemctl --root="$root" disable wpa_supplicant.service >/dev/null 2>&1

# 3. The boot partition: firmware, kernel, initrd, device trees, config.txt and cmdline.txt as
# Debian's raspi-firmware hook writes them (from /etc/default/raspi-firmware, so a kernel
# upgrade on the board keeps them right), and the apiary.toml template.
boot="$work/boot"
mv "$root/boot/firmware" "$boot"
mkdir "$root/boot/firmware"
cp "$here/boot/apiary.toml" "$boot/apiary.toml"

# 4. File systems from the directories, then the disk: MBR, FAT at BOOT_START_MIB, root after.
mib=$((1 << 20))
# Room for two kernels (~52 MB each, uncompressed) and their initrds during an upgrade.
boot_mib=512
root_mib=$(( $(du -sm "$root" | cut -f1) * 5 / 4 + 256 ))
mkfs.vfat -n APIARYBOOT -C "$work/boot.fat" $((boot_mib * 1024)) >/dev/null
mcopy -s -i "$work/boot.fat" "$boot"/* ::
mkfs.ext4 -q -L apiary-root -d "$root" "$work/root.ext4" "${root_mib}M"
img="$out/apiary-pi-arm64.img"
rm -f "$img" "$img.xz"
truncate -s $(( (BOOT_START_MIB + boot_mib + root_mib) * mib )) "$img"
sfdisk -q "$img" <<EOF
label: dos
label-id: 0x41706961
start=${BOOT_START_MIB}MiB, size=${boot_mib}MiB, type=c, bootable
start=$((BOOT_START_MIB + boot_mib))MiB, type=83
EOF
dd if="$work/boot.fat" of="$img" bs=1M seek="$BOOT_START_MIB" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((BOOT_START_MIB + boot_mib)) conv=notrunc,sparse status=none
echo "$img: $(( $(stat -c %s "$img") / mib )) MiB (boot ${boot_mib} MiB, root ${root_mib} MiB)"
if [ "${APIARY_IMAGE_XZ:-1}" = 1 ]; then
  xz -T0 -3 -k "$img"
  echo "$img.xz: $(( $(stat -c %s "$img.xz") / mib )) MiB"
fi

#!/usr/bin/env bash
# Check an image without booting it: the partition table, the boot partition's files and
# the root file system's contents (read with mtools and debugfs, no mounts).
#   images/check.sh [image]     (default: images/build.sh's raw image)
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
. "$(dirname "$0")/layout.sh"
img="${1:-${APIARY_IMAGE_DIR:-$CARGO_TARGET_DIR/images}/apiary-pi-arm64.img}"
host_bin="${APIARY_BIN:-$CARGO_TARGET_DIR/debug/apiary}"
[ -f "$img" ] || { echo "no image at $img: run images/build.sh" >&2; exit 2; }
need_commands mcopy:mtools debugfs:e2fsprogs sfdisk:fdisk file:file zstd:zstd cpio:cpio
[ -x "$host_bin" ] || cargo build -q -p apiary --bin apiary
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
check() { # check <what> <command...>
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "ok   $what"; else echo "FAIL $what"; failures=$((failures + 1)); fi
}
has() { grep -qE -- "$2" "$1"; }

# Partition table: MBR, FAT32 (LBA) boot partition marked bootable at 4 MiB, Linux root after.
sfdisk --json "$img" > "$work/table.json"
python3 - "$work/table.json" "$((BOOT_OFFSET / 512))" <<'PY' || failures=$((failures + 1))
import json, sys
t = json.load(open(sys.argv[1]))["partitiontable"]
boot_start = int(sys.argv[2])  # 8192 sectors: 4 MiB
p = t["partitions"]
want = [
    (t["label"] == "dos", "an MBR (dos) partition table"),
    (len(p) == 2, "two partitions"),
    (p[0]["start"] == boot_start == 8192 and p[0]["type"] == "c" and p[0].get("bootable"), "boot: FAT32 LBA, bootable, at 4 MiB"),
    (p[1]["type"] == "83" and p[1]["start"] >= p[0]["start"] + p[0]["size"], "root: Linux, after boot"),
]
for good, what in want:
    print(("ok   " if good else "FAIL ") + what)
sys.exit(0 if all(g for g, _ in want) else 1)
PY
boot=$(boot_of "$img")
root_start=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitiontable"]["partitions"][1]["start"] * 512)' "$work/table.json")

# The boot partition, as the Pi firmware reads it.
mkdir "$work/boot"
mcopy -s -n -i "$boot" '::*' "$work/boot/"
check "boot partition label APIARYBOOT" sh -c "MTOOLS_SKIP_CHECK=1 mlabel -s -i '$boot' :: | grep -q APIARYBOOT"
# Pi 4 (its firmware is start4.elf; a Pi 5's is in its EEPROM) and both Pi 5 steppings (C1; D0
# under the name its firmware looks for).
for f in start4.elf fixup4.dat bcm2711-rpi-4-b.dtb bcm2711-rpi-400.dtb bcm2711-rpi-cm4-io.dtb \
         bcm2712-rpi-5-b.dtb bcm2712-d-rpi-5-b.dtb bcm2712d0-rpi-5-b.dtb config.txt cmdline.txt \
         apiary.toml; do
  check "boot: $f" test -s "$work/boot/$f"
done
c="$work/boot/config.txt"
check "config.txt: 64-bit" has "$c" '^arm_64bit=1$'
kernel=$(config_kernel "$c"); initrd=$(config_initrd "$c")
check "config.txt: kernel $kernel is there, an arm64 Linux image" \
  sh -c "file -b '$work/boot/$kernel' | grep -q 'Linux kernel ARM64 boot executable'"
check "config.txt: initramfs $initrd is there" test -s "$work/boot/$initrd"
check "cmdline.txt: root by label, serial consoles of the Pi 4 (ttyS1) and Pi 5 (ttyAMA10)" \
  has "$work/boot/cmdline.txt" 'console=ttyS1,115200 console=ttyAMA10,115200 root=LABEL=apiary-root .*rootwait'
check "bcm2712d0-rpi-5-b.dtb is Debian's D0 device tree" \
  cmp "$work/boot/bcm2712-d-rpi-5-b.dtb" "$work/boot/bcm2712d0-rpi-5-b.dtb"
# The kernel from trixie-backports (7.x), with the Pi 5's drivers; the SD card's in the initrd.
version=${kernel#vmlinuz-}
check "kernel $version is from trixie-backports (7.x)" sh -c "echo '$version' | grep -qE '^([7-9]|[1-9][0-9])\.'"
case "$(file -b "$work/boot/$initrd")" in
  Zstandard*) zstd -dc "$work/boot/$initrd" ;;
  gzip*) gzip -dc "$work/boot/$initrd" ;;
  *) cat "$work/boot/$initrd" ;;
esac | cpio -it --quiet 2>/dev/null > "$work/initrd.list" || true
check "initrd (MODULES=most) has the Pi 5's SD card driver sdhci-brcmstb" \
  grep -q '/sdhci-brcmstb\.ko' "$work/initrd.list"
check "initrd has the Pi 4's SD card driver sdhci-iproc" grep -q '/sdhci-iproc\.ko' "$work/initrd.list"
check "apiary.toml template passes apiary config check" \
  "$host_bin" --config "$work/boot/apiary.toml" config check

# The root file system.
rootfs="$img?offset=$root_start"
dbg() { debugfs -R "$1" "$rootfs" 2>/dev/null; }
dbg "cat /etc/debian_version" > "$work/debian_version"
check "root: Debian 13 (trixie)" has "$work/debian_version" '^13'
dbg "dump /usr/bin/apiary $work/apiary" >/dev/null
check "root: /usr/bin/apiary is an aarch64 executable" sh -c "file -b '$work/apiary' | grep -q 'ARM aarch64'"
dbg "cat /usr/lib/modules/$version/modules.dep" > "$work/modules.dep"
for m in sdhci-brcmstb rp1_pci clk-rp1 pinctrl-rp1 pinctrl-brcmstb-bcm2712 irq-bcm2712-mip macb dwc3 \
         sdhci-iproc genet; do
  check "root: kernel module $m (Pi 4 / Pi 5)" grep -qE "/$m\.ko(\.xz|\.zst)?:" "$work/modules.dep"
done
dbg "cat /etc/apt/preferences.d/apiary-kernel.pref" > "$work/pin"
check "root: kernel upgrades follow trixie-backports" has "$work/pin" '^Pin: release n=trixie-backports'
dbg "cat /var/lib/dpkg/status" > "$work/status"
for p in apiary linux-image-arm64 raspi-firmware firmware-brcm80211 systemd systemd-timesyncd \
         fake-hwclock openssh-server wpasupplicant ca-certificates cloud-guest-utils nftables; do
  check "root: package $p installed" \
    python3 -c "import sys; t=open(sys.argv[1]).read(); sys.exit(0 if '\nPackage: $p\nStatus: install ok installed' in '\n'+t else 1)" "$work/status"
done
for t in multi-user sysinit; do dbg "ls /etc/systemd/system/$t.target.wants"; done > "$work/wants"
for u in apiary.service apiary-update.path apiary-boot.service systemd-networkd.service ssh.service systemd-timesyncd.service; do
  check "root: $u enabled" grep -qF "$u" "$work/wants"
done
dbg "cat /usr/lib/systemd/system/apiary.service" > "$work/unit"
for k in 'Type=notify' 'WatchdogSec=' 'User=apiary' 'StateDirectory=apiary' 'ProtectSystem=strict' \
         'NoNewPrivileges=yes' 'MemoryMax=' 'Restart=on-failure'; do
  check "apiary.service: $k" has "$work/unit" "^$k"
done
dbg "cat /etc/fstab" > "$work/fstab"
check "fstab: root and boot by label" sh -c "grep -q '^LABEL=apiary-root' '$work/fstab' && grep -q '^LABEL=APIARYBOOT */boot/firmware' '$work/fstab'"
dbg "ls /etc/ssh" > "$work/etc-ssh"
check "root: no SSH host keys (made at first boot)" \
  sh -c "grep -q sshd_config '$work/etc-ssh' && ! grep -q ssh_host_ '$work/etc-ssh'"
for f in /usr/lib/apiary/apiary-boot /usr/lib/apiary/apiary-update /usr/lib/sysusers.d/apiary.conf \
         /etc/systemd/system/apiary.service.d/boot-config.conf /etc/systemd/network/20-wired.network \
         /usr/bin/growpart /usr/sbin/sfdisk /usr/sbin/resize2fs /usr/bin/findmnt /usr/bin/ssh-keygen \
         /usr/bin/wpa_passphrase; do
  check "root: $f" sh -c "debugfs -R 'stat $f' '$rootfs' 2>/dev/null | grep -q 'Type: regular'"
done
installed=$(python3 -c "import re, sys; t=open(sys.argv[1]).read(); print(re.search(r'\nPackage: apiary\n(?:.+\n)*?Version: (.+)', '\n'+t).group(1))" "$work/status")
check "root: the update helper keeps the installed package to go back to" \
  sh -c "debugfs -R 'stat /var/lib/apiary-update/apiary_${installed}_arm64.deb' '$rootfs' 2>/dev/null | grep -q 'Type: regular'"
dbg "cat /etc/passwd" > "$work/passwd"
check "root: the apiary user (made by the package)" has "$work/passwd" '^apiary:'
dbg "stat /etc/machine-id" > "$work/machine-id"
check "root: empty machine-id (made at first boot)" has "$work/machine-id" 'Size: 0'
check "root: ext4 label apiary-root" sh -c "dumpe2fs -h '$rootfs' 2>/dev/null | grep -q 'volume name: *apiary-root'"

[ $failures -eq 0 ] || { echo "image check: $failures failed" >&2; exit 1; }
echo "image check passed: $img"

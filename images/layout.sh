# The disk layout images/build.sh writes and images/check.sh and boot-test.sh read: sourced.
BOOT_START_MIB=4                      # the FAT boot partition starts here
BOOT_OFFSET=$((BOOT_START_MIB << 20))

# mtools' name for the boot partition of an image file.
boot_of() { echo "$1@@$BOOT_OFFSET"; }

# The kernel and initramfs config.txt names: what the Pi firmware loads.
config_kernel() { sed -n 's/^kernel=//p' "$1"; }
config_initrd() { sed -n 's/^initramfs \([^ ]*\).*/\1/p' "$1"; }

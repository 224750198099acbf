SUMMARY = "A minimal image that boots into an Apiary node"
DESCRIPTION = "core-image-minimal with the Apiary node as a systemd service, SSH and CA certificates."
SECTION = "images"
LICENSE = "MIT"

inherit core-image

IMAGE_FEATURES += "ssh-server-dropbear"
IMAGE_INSTALL = "packagegroup-core-boot ${CORE_IMAGE_EXTRA_INSTALL} apiary ca-certificates"

# Room beyond the root file system for the node's write-ahead log, scratch and cell cache.
IMAGE_ROOTFS_EXTRA_SPACE = "1048576"

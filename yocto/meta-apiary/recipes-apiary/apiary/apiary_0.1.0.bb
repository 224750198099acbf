SUMMARY = "Apiary: a lakehouse for small computers"
DESCRIPTION = "One binary that ingests MQTT messages durably into Delta Lake tables \
               in a bucket, answers SQL through DataFusion, runs WebAssembly UDFs in \
               memory-budgeted chambers, and shares work with other nodes through the bucket."
SECTION = "database"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"
CVE_PRODUCT = "apiary"

# The Apiary checkout this layer lives in (yocto/meta-apiary/recipes-apiary/apiary); set
# APIARY_REPO (and SRCREV) to build another clone or a pinned revision.
APIARY_REPO ?= "${@os.path.normpath(os.path.join(d.getVar('FILE_DIRNAME'), '..', '..', '..', '..'))}"

PV .= "+git"

SRC_URI = "git://${APIARY_REPO};protocol=file;branch=main;destsuffix=git \
           file://apiary.service \
           file://apiary.toml \
           "
# The checkout's current commit, whatever it is; pin SRCREV for a reproducible release.
# nooelint: oelint.vars.autorev
SRCREV = "${AUTOREV}"

S = "${UNPACKDIR}/git"

inherit cargo cargo-update-recipe-crates systemd useradd

# Every crate of Cargo.lock, for offline fetching: regenerate with scripts/yocto-crates.
require ${BPN}-crates.inc

CARGO_SRC_DIR = "node"
CARGO_BUILD_FLAGS += "--bin apiary"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/apiary --no-create-home --shell /sbin/nologin apiary"

SYSTEMD_SERVICE:${PN} = "apiary.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${UNPACKDIR}/apiary.service ${D}${systemd_system_unitdir}/apiary.service
    install -d ${D}${sysconfdir}/apiary
    install -m 0644 ${UNPACKDIR}/apiary.toml ${D}${sysconfdir}/apiary/apiary.toml
}

FILES:${PN} += "${systemd_system_unitdir}/apiary.service"
CONFFILES:${PN} = "${sysconfdir}/apiary/apiary.toml"

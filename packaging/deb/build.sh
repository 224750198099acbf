#!/usr/bin/env bash
# Build the node's Debian package from a built binary:
#   packaging/deb/build.sh <arm64|amd64> <binary> <out dir>     -> prints the .deb's path
# What it holds: /usr/bin/apiary, the systemd unit (the one the image and the Yocto layer
# use), the update helper (apiary-update.path/.service, docs/updates.md), the sysusers entry, the config template (/usr/share/apiary/apiary.toml, copied to
# /etc/apiary/apiary.toml once by postinst and never replaced) and maintainer scripts that
# never delete data. The version is the workspace's plus the commit count and hash, so every
# commit's package sorts after the one before it.
set -euo pipefail
. "$(dirname "$0")/../../scripts/env.sh"
arch=$1 bin=$2 out=$3
case "$arch" in arm64|amd64) ;; *) echo "arch $arch: use arm64 or amd64" >&2; exit 2 ;; esac
need_commands dpkg-deb:dpkg
here="$REPO/packaging/deb"
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
version="$cargo_version+$(git -C "$REPO" rev-list --count HEAD).g$(git -C "$REPO" rev-parse --short=8 HEAD)"
pkg=$(mktemp -d "${TMPDIR:-/tmp}/apiary-deb.XXXXXX")
chmod 0755 "$pkg"
trap 'rm -rf "$pkg"' EXIT
install -D -m 0755 "$bin" "$pkg/usr/bin/apiary"
install -D -m 0644 "$REPO/yocto/meta-apiary/recipes-apiary/apiary/files/apiary.service" \
  "$pkg/usr/lib/systemd/system/apiary.service"
install -D -m 0644 "$here/apiary-update.service" "$here/apiary-update.path" -t "$pkg/usr/lib/systemd/system/"
install -D -m 0755 "$here/apiary-update" "$pkg/usr/lib/apiary/apiary-update"
echo "$version" > "$pkg/usr/lib/apiary/version"   # the node reports it (release::running_version)
install -D -m 0644 "$here/apiary.sysusers" "$pkg/usr/lib/sysusers.d/apiary.conf"
install -D -m 0644 "$here/apiary.toml" "$pkg/usr/share/apiary/apiary.toml"
install -D -m 0644 "$REPO/LICENSE" "$pkg/usr/share/doc/apiary/copyright"
install -D -m 0644 "$REPO/docs/updates.md" "$pkg/usr/share/doc/apiary/updates.md"
install -d "$pkg/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$pkg/DEBIAN/"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: apiary
Version: $version
Architecture: $arch
Maintainer: Apiary maintainers <maintainers@apiary.invalid>
Installed-Size: $(du -sk "$pkg/usr" | cut -f1)
Depends: libc6 (>= 2.36), systemd (>= 252)
Section: database
Priority: optional
Description: lakehouse for small computers
 Apiary ingests MQTT messages durably into Delta Lake tables on a local disk or an S3
 bucket, answers SQL through Apache DataFusion and runs user functions compiled to
 WebAssembly. Nodes pointing at one bucket form a swarm.
CONTROL
mkdir -p "$out"
deb="$out/apiary_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -z3 --build "$pkg" "$deb" >/dev/null
echo "$deb"

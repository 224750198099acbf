#!/usr/bin/env bash
# Build the appliance binary (profile `appliance`) for aarch64 (default) or another target,
# and print its size:  scripts/cross-build.sh [aarch64-unknown-linux-gnu|x86_64-unknown-linux-gnu]
# Uses `cross` (Cross.toml) where Docker works, else cargo with Debian's gcc-aarch64-linux-gnu,
# installing it and the rustup target when missing.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
target="${1:-aarch64-unknown-linux-gnu}"
args=(build --profile appliance --target "$target" -p apiary --bin apiary)
if command -v cross >/dev/null && docker info >/dev/null 2>&1; then
  cross "${args[@]}"
else
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  if [ "$target" = aarch64-unknown-linux-gnu ]; then
    need_commands aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu,libc6-dev-arm64-cross file:file
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  fi
  cargo "${args[@]}"
fi
bin="$CARGO_TARGET_DIR/$target/appliance/apiary"
echo "$bin: $(file -b "$bin" | cut -d, -f1-2), $(( $(stat -c %s "$bin") / 1048576 )) MiB ($(stat -c %s "$bin") bytes, stripped)"

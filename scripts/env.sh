# Shared settings for the scripts: sourced, not run.
# One cargo target dir outside the clone, so CI and later runs reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/apiary/target}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO
VENV="$REPO/.venv"
export VENV
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Wait until a TCP port accepts connections (deadline in seconds).
wait_port() {
  local port=$1 deadline=$((SECONDS + ${2:-30}))
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && { echo "port $port did not open in time" >&2; return 1; }
    sleep 0.2
  done
}

# Install Debian packages (quietly, without recommends).
need_packages() {
  [ $# -gt 0 ] || return 0
  echo "installing ${*}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Install the packages of the commands that are missing: need_commands cmd:pkg[,pkg...] ...
need_commands() {
  local missing=() t pkgs
  for t in "$@"; do
    command -v "${t%%:*}" >/dev/null && continue
    IFS=, read -ra pkgs <<<"${t#*:}"
    missing+=("${pkgs[@]}")
  done
  need_packages "${missing[@]}"
}

# Run arm64 programs (maintainer scripts in a chroot) through qemu-user: mount binfmt_misc
# and register qemu-aarch64 when the kernel does not know them yet.
need_binfmt_aarch64() {
  need_commands qemu-aarch64-static:qemu-user-static
  local binfmt=/proc/sys/fs/binfmt_misc
  mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt"
  [ -e "$binfmt/qemu-aarch64" ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > "$binfmt/register"
}

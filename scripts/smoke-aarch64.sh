#!/usr/bin/env bash
# Smoke-test the aarch64 appliance binary under qemu-aarch64-static (user emulation, no
# binfmt_misc needed): --version, a SQL round trip on a local meadow, and a WebAssembly UDF
# call (wasmtime's aarch64 code generator at work). Builds it first (cargo: a no-op when
# it is up to date).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
target=aarch64-unknown-linux-gnu
bin="$CARGO_TARGET_DIR/$target/appliance/apiary"
"$REPO/scripts/cross-build.sh" "$target"
need_commands qemu-aarch64-static:qemu-user-static
udf="$CARGO_TARGET_DIR/wasm32-wasip2/release/examples/dew_point.wasm"
[ -f "$udf" ] || cargo build -q -p apiary-udf --examples --target wasm32-wasip2 --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
  APIARY_LOG=warn qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" \
    --storage "$work/meadow" --state-dir "$work/state" "$@"
}
expect() { # expect <what> <needle> <output>
  grep -qF -- "$2" <<<"$3" || { echo "aarch64 smoke: $1: expected '$2' in:" >&2; echo "$3" >&2; exit 1; }
}
out=$(run --version); expect "--version" "apiary" "$out"
run sql "CREATE HIVE h; CREATE BOX h.b; CREATE FRAME h.b.t (k STRING, v DOUBLE);
         INSERT INTO h.b.t VALUES ('a', 1.5), ('b', 2.5), ('a', 3.0)" >/dev/null
out=$(run sql --format csv "SELECT k, sum(v) AS s FROM h.b.t GROUP BY k ORDER BY k")
expect "SQL round trip" $'a,4.5\nb,2.5' "$out"
run udf add dew_point "$udf" >/dev/null
out=$(run sql --format csv "SELECT round(dew_point(20.0, 50.0), 1) AS dp")
expect "UDF call" "9.3" "$out"
echo "aarch64 smoke test passed: $(file -b "$bin" | cut -d, -f1-2); version, SQL round trip, WASM UDF"

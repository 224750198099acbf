"""The lakehouse promise: a frame written by Apiary is a plain Delta table that another Delta
reader (the `deltalake` Python package) reads straight from the bucket, with the same rows."""

import io
import json

import pyarrow as pa
import pyarrow.ipc
import pytest
from deltalake import DeltaTable

ROWS = [
    {"id": i, "temp": 20.0 + i / 10, "site": ["north", "south"][i % 2], "ts": f"2026-11-27T10:{i % 60:02d}:00Z"}
    for i in range(500)
]


def write_frame(meadow):
    meadow.run("sql", "CREATE HIVE lake; CREATE BOX lake.s; "
               "CREATE TABLE lake.s.readings (id BIGINT, temp DOUBLE, site TEXT, ts TIMESTAMP) PARTITIONED BY (site)")
    body = "".join(json.dumps(r) + "\n" for r in ROWS[:300]).encode()
    meadow.run("write", "lake.s.readings", "-", "--format", "jsonl", input=body)
    body = "".join(json.dumps(r) + "\n" for r in ROWS[300:]).encode()
    meadow.run("write", "lake.s.readings", "-", input=body)


def apiary_rows(meadow):
    out = meadow.run("sql", "SELECT id, temp, site FROM lake.s.readings ORDER BY id", "--format", "arrow").stdout
    return pa.ipc.open_stream(io.BytesIO(out)).read_all().to_pylist()


def check(meadow, table_uri, storage_options=None):
    write_frame(meadow)
    dt = DeltaTable(table_uri, storage_options=storage_options)
    assert dt.version() == 2
    assert dt.metadata().partition_columns == ["site"]
    theirs = dt.to_pyarrow_table().select(["id", "temp", "site"]).sort_by("id").to_pylist()
    ours = apiary_rows(meadow)
    assert len(theirs) == len(ROWS)
    assert theirs == ours
    assert [r["id"] for r in theirs] == [r["id"] for r in ROWS]
    # Time travel agrees too.
    dt1 = DeltaTable(table_uri, version=1, storage_options=storage_options)
    assert dt1.to_pyarrow_table().num_rows == 300


def test_deltalake_reads_a_local_frame(local_meadow):
    check(local_meadow, local_meadow.uri + "/lake/s/readings")


def test_deltalake_reads_a_frame_from_s3(s3_meadow):
    check(s3_meadow, s3_meadow.uri + "/lake/s/readings", s3_meadow.storage_options)


def test_bad_rows_are_refused_whole(local_meadow):
    write_frame(local_meadow)
    bad = (json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "not a number", "site": "x"}) + "\n").encode()
    proc = local_meadow.run("write", "lake.s.readings", "-", input=bad, check=False)
    assert proc.returncode != 0
    assert proc.stderr.decode().startswith("error: ")
    assert DeltaTable(local_meadow.uri + "/lake/s/readings").version() == 2


def test_a_new_json_field_is_a_column_deltalake_reads(tmp_path, apiary_binary):
    """Ingest's schema evolution is a real Delta schema change: another reader sees the column."""
    import os
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    meadow = tmp_path / "meadow"
    config = tmp_path / "apiary.toml"
    config.write_text(
        f'[node]\nstate_dir = "{tmp_path / "state"}"\n[meadow]\nuri = "{meadow}"\n'
        f'[mqtt]\nlisten = "127.0.0.1:{port}"\n[http]\nenabled = false\n'
        '[ingest]\nmax_latency = "200ms"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    node = subprocess.Popen([apiary_binary, "--config", str(config), "node"],
                            stderr=subprocess.PIPE, env=env)
    table = meadow / "evo" / "s" / "air"

    def wait(what, ok, within=30):
        deadline = time.monotonic() + within
        while not ok():
            assert node.poll() is None, node.stderr.read().decode()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def publish(payload):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                        "-t", "apiary/evo/s/air", "-m", payload], check=True, timeout=30)

    def rows():
        try:
            return DeltaTable(str(table)).to_pyarrow_table().num_rows
        except Exception:
            return 0

    try:
        wait("the broker", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0)
        publish('{"id": 1, "temp": 20.5}')
        wait("the first row", lambda: rows() == 1)
        publish('{"id": 2, "temp": 21.5, "humidity": 40.25}')
        wait("the second row", lambda: rows() == 2)
        dt = DeltaTable(str(table))
        assert "humidity" in [f.name for f in dt.schema().fields]
        got = dt.to_pyarrow_table().select(["id", "humidity"]).sort_by("id").to_pylist()
        assert got == [{"id": 1, "humidity": None}, {"id": 2, "humidity": 40.25}]
    finally:
        node.terminate()
        node.wait(timeout=30)

"""Every call of PYTHON_API.md: names, aliases, arguments, dict keys, error types."""

import io
import os

import pyarrow as pa
import pytest

import apiary
from apiary import Apiary, ApiaryError

UDF_DIR = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/apiary/target")),
    "wasm32-wasip2",
    "release",
    "examples",
)


def ipc(table):
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def from_ipc(data):
    return pa.ipc.open_stream(data).read_all()


def make_frame(ap):
    ap.create_hive("warehouse")
    ap.create_box("warehouse", "sales")
    ap.create_frame(
        "warehouse", "sales", "orders", {"id": "int64", "region": "utf8", "amount": "float64"},
        partition_by=["region"],
    )


def test_errors_are_runtime_errors_with_subclasses():
    for name in ["NotFound", "AlreadyExists", "Conflict", "Unsupported", "InvalidInput", "Busy", "Timeout"]:
        cls = getattr(apiary, name)
        assert issubclass(cls, ApiaryError), name
    assert issubclass(ApiaryError, RuntimeError)
    assert isinstance(apiary.__version__, str)


def test_calls_before_start_say_so(tmp_path):
    node = Apiary("early", storage=str(tmp_path / "m"))
    with pytest.raises(ApiaryError, match="node not started"):
        node.list_hives()
    with pytest.raises(RuntimeError, match="node not started"):
        node.sql("SELECT 1")
    node.shutdown()  # fine before start, and twice
    node.shutdown()
    with pytest.raises(apiary.InvalidInput):
        Apiary("bad name!")


def test_default_storage_and_context_manager(tmp_path):
    with Apiary("ctx") as ap:
        ap.create_hive("h")
        assert ap.status()["storage"] == "local"
    assert (tmp_path / "data" / "apiary" / "ctx" / "meadow" / "_apiary").exists()
    with pytest.raises(ApiaryError, match="node not started"):
        ap.list_hives()
    with Apiary("ctx") as again:
        assert again.list_hives() == ["h"], "the same name finds its data again"


def test_config_file_and_environment_layer_like_the_cli(tmp_path, monkeypatch):
    # apiary.toml, then APIARY_* variables, then the constructor's arguments.
    conf = tmp_path / "apiary.toml"
    conf.write_text(
        f'[node]\nstate_dir = "{tmp_path / "from-file"}"\n[bees]\ncount = 1\n'
        f'[swarm]\nenabled = false\n'
    )
    monkeypatch.setenv("APIARY_CONFIG", str(conf))
    monkeypatch.setenv("APIARY_MEMORY_PER_BEE", "48MiB")
    with Apiary("layered", storage=str(tmp_path / "meadow")) as ap:
        s = ap.status()
        assert s["bees"] == 1, "from the file"
        assert s["memory_per_bee_mb"] == 48, "from the environment"
        assert s["storage_uri"].rstrip("/").endswith("meadow"), "from the argument"
    assert (tmp_path / "from-file" / "node_id").exists(), "state dir from the file"
    assert not (tmp_path / "meadow" / "_apiary" / "swarm" / "nodes").exists(), "swarm off"
    conf.write_text("[bees]\ncount = 0\n")
    with pytest.raises(apiary.InvalidInput, match="bees.count"):
        Apiary("bad", storage=str(tmp_path / "meadow")).start()


def test_namespaces_and_aliases(ap):
    assert ap.create_hive("warehouse") is None
    ap.create_hive("warehouse")  # again: not an error
    ap.create_database("archive")
    assert ap.list_hives() == ["archive", "warehouse"]
    assert ap.list_databases() == ["archive", "warehouse"]
    ap.create_box("warehouse", "sales")
    ap.create_box("warehouse", "sales")
    ap.create_schema("warehouse", "hr")
    assert ap.list_boxes("warehouse") == ["hr", "sales"]
    assert ap.list_schemas("warehouse") == ["hr", "sales"]
    schema = {"id": "int64", "region": "string", "amount": "double"}
    ap.create_frame("warehouse", "sales", "orders", schema, partition_by=["region"])
    ap.create_frame("warehouse", "sales", "orders", schema, partition_by=["region"])
    ap.create_table("warehouse", "sales", "returns", {"id": "int"})
    ap.create_frame(hive="warehouse", box="sales", name="kw", schema={"x": "bool"})
    assert ap.list_frames("warehouse", "sales") == ["kw", "orders", "returns"]
    assert ap.list_tables("warehouse", "sales") == ["kw", "orders", "returns"]
    with pytest.raises(apiary.AlreadyExists):
        ap.create_frame("warehouse", "sales", "orders", {"id": "int32"})
    with pytest.raises(apiary.InvalidInput, match="nonsense"):
        ap.create_frame("warehouse", "sales", "bad", {"id": "nonsense"})
    with pytest.raises(apiary.NotFound, match="hive not found: nohive"):
        ap.list_boxes("nohive")
    with pytest.raises(apiary.NotFound, match="box not found: warehouse.nobox"):
        ap.list_frames("warehouse", "nobox")
    with pytest.raises(apiary.NotFound, match="frame not found: warehouse.sales.nothing"):
        ap.get_frame("warehouse", "sales", "nothing")
    info = ap.get_frame("warehouse", "sales", "orders")
    assert set(info) == {
        "name", "schema", "partition_by", "created_at", "cell_count", "row_count",
        "total_bytes", "version", "max_partitions",
    }
    assert info["schema"] == schema, "as given"
    assert info["partition_by"] == ["region"]
    assert info["row_count"] == 0
    assert ap.get_table("warehouse", "sales", "orders")["name"] == "orders"


def test_write_read_overwrite(ap):
    make_frame(ap)
    t = pa.table({"id": [1, 2, 3], "region": ["n", "s", "n"], "amount": [1.5, 2.5, 3.5]})
    r = ap.write_to_frame("warehouse", "sales", "orders", ipc(t))
    assert set(r) == {"version", "cells_written", "rows_written", "bytes_written", "duration_ms", "temperature"}
    assert r["rows_written"] == 3 and r["cells_written"] == 2 and 0 <= r["temperature"] <= 1
    ap.write_to_frame("warehouse", "sales", "orders", t)  # a pyarrow.Table
    ap.write_to_frame("warehouse", "sales", "orders", t.to_batches()[0])  # a RecordBatch
    assert ap.get_frame("warehouse", "sales", "orders")["row_count"] == 9
    back = from_ipc(ap.read_from_frame("warehouse", "sales", "orders"))
    assert back.num_rows == 9
    north = from_ipc(ap.read_from_frame("warehouse", "sales", "orders", partition_filter={"region": "n"}))
    assert north.num_rows == 6
    assert ap.read_from_frame("warehouse", "sales", "orders", partition_filter={"region": "x"}) is None
    table = ap.read("warehouse", "sales", "orders", partition_filter={"region": "s"})
    assert isinstance(table, pa.Table) and table.num_rows == 3
    r = ap.overwrite_frame("warehouse", "sales", "orders", pa.table({"id": [7], "region": ["w"], "amount": [0.5]}))
    assert r["rows_written"] == 1
    assert ap.query("SELECT id FROM warehouse.sales.orders").column("id").to_pylist() == [7]
    # Bad data: nothing committed.
    before = ap.get_frame("warehouse", "sales", "orders")["version"]
    with pytest.raises(apiary.InvalidInput):
        ap.write_to_frame("warehouse", "sales", "orders", pa.table({"id": ["x"], "region": ["n"]}))
    with pytest.raises(apiary.InvalidInput, match="null"):
        ap.write_to_frame("warehouse", "sales", "orders", pa.table({"id": [1], "region": pa.array([None], pa.string())}))
    with pytest.raises(apiary.InvalidInput, match="IPC"):
        ap.write_to_frame("warehouse", "sales", "orders", b"not arrow")
    with pytest.raises(apiary.InvalidInput, match="cannot write a dict"):
        ap.write_to_frame("warehouse", "sales", "orders", {"id": [1]})
    with pytest.raises(apiary.NotFound):
        ap.write_to_frame("warehouse", "sales", "nope", t)
    assert ap.get_frame("warehouse", "sales", "orders")["version"] == before


def test_sql_and_query(ap):
    make_frame(ap)
    assert ap.sql("INSERT INTO warehouse.sales.orders VALUES (1, 'n', 2.0), (2, 's', 3.0)") is not None
    out = from_ipc(ap.sql("SELECT region, sum(amount) AS total FROM warehouse.sales.orders GROUP BY region ORDER BY region"))
    assert out.to_pydict() == {"region": ["n", "s"], "total": [2.0, 3.0]}
    assert ap.sql("CREATE HIVE other") is None, "no result batches"
    t = ap.query("USE warehouse.sales; SELECT count(*) AS n FROM orders")
    assert t.column("n").to_pylist() == [2]
    with pytest.raises(apiary.InvalidInput, match="SQL syntax error"):
        ap.sql("SELEC 1")
    with pytest.raises(apiary.Unsupported, match="MERGE is not supported"):
        ap.sql("MERGE INTO warehouse.sales.orders USING x ON true WHEN MATCHED THEN DELETE")
    with pytest.raises(apiary.InvalidInput, match="no column nope"):
        ap.sql("UPDATE warehouse.sales.orders SET nope = 0")
    with pytest.raises(apiary.NotFound):
        ap.query("SELECT * FROM warehouse.sales.nothing")


def test_status_dicts(ap):
    s = ap.status()
    assert set(s) >= {"name", "node_id", "cores", "memory_gb", "bees", "storage", "memory_per_bee_mb", "target_cell_size_mb", "state"}
    assert s["name"] == "test" and s["storage"] in ("local", "s3")
    bees = ap.bee_status()
    assert bees[0]["bee_id"] == "bee-0"
    assert set(bees[0]) == {"bee_id", "state", "task", "memory_used", "memory_budget", "memory_used_mb", "memory_budget_mb"}
    sw = ap.swarm_status()
    assert set(sw) == {"nodes", "alive", "total_bees", "total_idle_bees"}
    assert set(sw["nodes"][0]) >= {"node_id", "state", "bees", "idle_bees", "memory_pressure", "colony_temperature"}
    assert sw["alive"] == 1 and sw["total_bees"] == s["bees"]
    c = ap.colony_status()
    assert set(c) == {"temperature", "regulation", "setpoint", "abandoned_tasks", "retried_tasks"}
    assert c["regulation"] in ("cold", "ideal", "warm", "hot", "critical")


def test_udfs(ap, tmp_path):
    path = os.path.join(UDF_DIR, "celsius_to_f.wasm")
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: scripts/test builds the UDF examples")
    m = ap.register_udf("c2f", path)
    assert m["name"] == "c2f" and m["returns"] == "float64"
    with open(path, "rb") as f:
        ap.register_udf("c2f_bytes", f.read())
    assert [u["name"] for u in ap.list_udfs()] == ["c2f", "c2f_bytes"]
    assert ap.query("SELECT c2f(100.0) AS f").column("f").to_pylist() == [212.0]
    ap.drop_udf("c2f_bytes")
    assert [u["name"] for u in ap.list_udfs()] == ["c2f"]
    with pytest.raises(apiary.InvalidInput, match="WebAssembly"):
        ap.register_udf("junk", b"\x00asm-not-really")
    with pytest.raises(apiary.InvalidInput, match="bytes or a path"):
        ap.register_udf("junk", 42)
    with pytest.raises(apiary.NotFound):
        ap.drop_udf("never_there")

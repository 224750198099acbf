"""Arrow in and out without copies, and real concurrency with the GIL released."""

import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa

from apiary import Apiary

# A window ordered over all rows runs in one partition: one query keeps one core busy, so
# queries from several threads can only finish sooner by really running at once.
SLOW = (
    "SELECT max(x) AS s FROM (SELECT sum(value) OVER (ORDER BY value DESC ROWS BETWEEN "
    "1 PRECEDING AND CURRENT ROW) AS x FROM generate_series(1, 300000))"
)


def test_threads_query_at_once(tmp_path):
    with Apiary("threads", storage=str(tmp_path / "m")) as ap:
        expected = ap.query(SLOW).column("s").to_pylist()  # also warms up

        def one_after_another():
            for _ in range(4):
                ap.query(SLOW)

        busy_seen = []
        results = []

        def four_threads():
            def worker():
                results.append(ap.query(SLOW).column("s").to_pylist())

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                busy_seen.append(sum(b["state"] == "busy" for b in ap.bee_status()))
                time.sleep(0.005)
            for t in threads:
                t.join()

        def best_of_3(f):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                f()
                times.append(time.perf_counter() - started)
            return min(times)

        sequential = best_of_3(one_after_another)
        threaded = best_of_3(four_threads)
        bees = len(ap.bee_status())
    assert len(results) == 12 and all(r == expected for r in results)
    print(f"4 queries: one after another {sequential:.2f} s, 4 threads {threaded:.2f} s, "
          f"most busy bees seen {max(busy_seen)} of {bees}")
    assert max(busy_seen) >= 2, "several bees busy at once"
    assert threaded < sequential * 0.8, (sequential, threaded)


def test_query_shares_buffers_instead_of_copying(tmp_path):
    # Each way in a fresh process, so its peak RSS is this query's: query() hands the
    # batches over; sql() returns IPC bytes that pyarrow then decodes.
    script = textwrap.dedent(
        f"""
        import sys
        import pyarrow
        from apiary import Apiary

        def peak():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        sql = "SELECT value, repeat('x', 200) AS pad FROM generate_series(1, 2000000)"
        with Apiary("big", storage={str(tmp_path / "m")!r}) as ap:
            ap.query("SELECT 1")
            before = peak()
            if sys.argv[1] == "query":
                t = ap.query(sql)
            else:
                t = pyarrow.ipc.open_stream(ap.sql(sql)).read_all()
            print(t.num_rows, t.nbytes, peak() - before)
        """
    )

    def grow(way):
        out = subprocess.run(
            [sys.executable, "-c", script, way], capture_output=True, text=True, check=True
        )
        return map(int, out.stdout.split())

    rows, nbytes, zero_copy = grow("query")
    _, _, through_ipc = grow("ipc")
    print(
        f"result {nbytes / 2**20:.0f} MiB: peak RSS grew {zero_copy / 2**20:.0f} MiB with "
        f"query(), {through_ipc / 2**20:.0f} MiB through IPC bytes"
    )
    assert rows == 2_000_000 and nbytes > 400_000_000
    assert zero_copy < 1.3 * nbytes, f"query() grew the peak by {zero_copy} for {nbytes} bytes"
    assert through_ipc > 1.5 * zero_copy


def test_pandas_and_polars_write_through_the_c_stream(tmp_path):
    import pandas as pd
    import polars as pl

    with Apiary("frames", storage=str(tmp_path / "m")) as ap:
        ap.create_hive("h")
        ap.create_box("h", "b")
        ap.create_frame("h", "b", "t", {"id": "int64", "name": "utf8", "score": "float64"})
        pdf = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "score": [0.5, 1.5]})
        assert hasattr(pdf, "__arrow_c_stream__")
        assert ap.write_to_frame("h", "b", "t", pdf)["rows_written"] == 2
        plf = pl.DataFrame({"id": [3], "name": ["c"], "score": [2.5]})
        assert ap.write_to_frame("h", "b", "t", plf)["rows_written"] == 1
        t = ap.query("SELECT * FROM h.b.t ORDER BY id")
        assert t.column("name").to_pylist() == ["a", "b", "c"]
        assert pl.from_arrow(ap.read("h", "b", "t")).height == 3

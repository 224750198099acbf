"""Swarm benchmark: the same query on one node and on three (overhead ratio on this box),
and the meadow requests an idle node makes per minute, counted by the node's meadow layer
(`apiary_meadow_requests_total` in /metrics). Everything runs against a real S3 server
(moto, started by scripts/bench) with the release `apiary` binary. Prints a Markdown report.

    python bench/swarm.py --apiary target/release/apiary --endpoint http://127.0.0.1:PORT
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import numpy as np
import pyarrow as pa

QUERY = (
    "SELECT device, count(*) AS n, avg(v) AS mean, max(seq) AS last "
    "FROM bench.swarm.readings WHERE v > 0.1 GROUP BY device ORDER BY device"
)
CELLS = 48
ROWS_PER_CELL = 250_000
IDLE_WARMUP_S = 30  # the forager's polling interval has grown to its cap by then
IDLE_WINDOW_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_options(endpoint):
    return {
        "endpoint": endpoint,
        "access_key_id": "test",
        "secret_access_key": "test",
        "region": "us-east-1",
    }


def load(storage, endpoint):
    """48 cells of 250,000 readings, one write each, over four day partitions."""
    from apiary import Apiary

    rng = np.random.default_rng(20261127)
    started = time.time()
    with Apiary("bench-loader", storage=storage, **s3_options(endpoint)) as ap:
        ap.create_hive("bench")
        ap.create_box("bench", "swarm")
        ap.sql(
            "CREATE FRAME bench.swarm.readings "
            "(device STRING, v DOUBLE, seq BIGINT, day STRING) PARTITION BY (day)"
        )
        for cell in range(CELLS):
            n = ROWS_PER_CELL
            table = pa.table(
                {
                    "device": pa.array([f"dev-{i:03d}" for i in rng.integers(0, 500, n)]),
                    "v": pa.array(rng.random(n)),
                    "seq": pa.array(np.arange(cell * n, (cell + 1) * n, dtype=np.int64)),
                    "day": pa.array([f"d{cell % 4}"] * n),
                }
            )
            ap.write_to_frame("bench", "swarm", "readings", table)
    return time.time() - started


class Node:
    def __init__(self, binary, root, storage, endpoint, name, interval=None):
        self.state = os.path.join(root, name)
        os.makedirs(self.state, exist_ok=True)
        self.log = os.path.join(root, f"{name}.log")
        opts = "\n".join(f'{k} = "{v}"' for k, v in s3_options(endpoint).items())
        swarm = f'heartbeat_interval = "{interval}"' if interval else ""
        config = f"""[node]
state_dir = "{self.state}"
node_id = "{name}"
[meadow]
uri = "{storage}"
[meadow.options]
{opts}
[http]
listen = "127.0.0.1:0"
[mqtt]
listen = "127.0.0.1:{free_port()}"
[swarm]
{swarm}
"""
        path = os.path.join(root, f"{name}.toml")
        with open(path, "w") as f:
            f.write(config)
        env = dict(os.environ, APIARY_LOG="warn,apiary=info")
        env.pop("APIARY_STORAGE", None)
        self.proc = subprocess.Popen(
            [binary, "--config", path, "node"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),
            env=env,
        )
        deadline = time.time() + 60
        while "apiary node ready" not in open(self.log).read():
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"node {name} did not start:\n{open(self.log).read()}")
            time.sleep(0.05)
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(self.log).read())
        self.url = re.findall(r" http=(\S+)", text)[-1]
        self.token = open(os.path.join(self.state, "api-token")).read().strip()

    def request(self, path, body=None, accept="application/json"):
        req = urllib.request.Request(
            self.url + path,
            data=body.encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Accept": accept},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.read().decode()

    def sql(self, q):
        return self.request("/v1/sql", q, accept="text/csv")

    def swarm(self):
        return json.loads(self.request("/v1/swarm"))

    def meadow_requests(self):
        text = self.request("/metrics", accept="text/plain")
        return sum(
            float(m) for m in re.findall(r"^apiary_meadow_requests_total\{[^}]*\} (\S+)", text, re.M)
        )

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def same(a, b, rel=1e-9):
    """CSV results equal, floats to `rel` (sums in another order differ in the last bits)."""
    ra, rb = a.splitlines(), b.splitlines()
    if len(ra) != len(rb):
        return False
    for la, lb in zip(ra, rb):
        for x, y in zip(la.split(","), lb.split(",")):
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                return False
            if abs(fx - fy) > rel * max(abs(fx), abs(fy)):
                return False
    return True


def timed(node, runs=5):
    node.sql(QUERY)  # warm-up: workers notice the first shared stage at their slowest poll
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = node.sql(QUERY)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def wait_alive(node, n):
    deadline = time.time() + 60
    while node.swarm()["alive"] < n:
        if time.time() > deadline:
            sys.exit(f"swarm never reached {n} alive nodes: {node.swarm()}")
        time.sleep(0.1)


def idle_rates(binary, root, storage, endpoint, interval):
    """Meadow requests per minute of each of three idle nodes."""
    nodes = [
        Node(binary, root, storage, endpoint, f"idle-{interval or 'default'}-{i}", interval)
        for i in range(3)
    ]
    try:
        time.sleep(IDLE_WARMUP_S)
        before = [n.meadow_requests() for n in nodes]
        time.sleep(IDLE_WINDOW_S)
        after = [n.meadow_requests() for n in nodes]
    finally:
        for n in nodes:
            n.stop()
    # The /metrics reads themselves make no meadow requests.
    return [(a - b) * 60 / IDLE_WINDOW_S for a, b in zip(after, before)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apiary", required=True, help="the release apiary binary")
    ap.add_argument("--endpoint", required=True, help="the S3 server (moto)")
    ap.add_argument("--bucket", default="apiary-test")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
    storage = f"s3://{args.bucket}/bench-swarm-{uuid.uuid4().hex[:8]}"
    root = tempfile.mkdtemp(prefix="apiary-bench-swarm-")
    load_s = load(storage, args.endpoint)

    a = Node(args.apiary, root, storage, args.endpoint, "node-a")
    one, one_result = timed(a)
    b = Node(args.apiary, root, storage, args.endpoint, "node-b")
    c = Node(args.apiary, root, storage, args.endpoint, "node-c")
    wait_alive(a, 3)
    done_before = {n["node_id"]: n["tasks_done"] for n in a.swarm()["nodes"]}
    three, three_result = timed(a)
    time.sleep(5)  # the counters travel in heartbeats (every 2 s)
    done_after = {n["node_id"]: n["tasks_done"] for n in a.swarm()["nodes"]}
    for n in (a, b, c):
        n.stop()
    shared = {k: done_after[k] - done_before.get(k, 0) for k in ("node-b", "node-c")}

    lan = idle_rates(args.apiary, root, storage, args.endpoint, None)
    cloud = idle_rates(args.apiary, root, storage, args.endpoint, "5s")

    print("## Swarm: one node against three, and the cost of an idle node")
    print()
    print(
        f"{CELLS} cells, {CELLS * ROWS_PER_CELL:,} rows in a moto S3 bucket (loaded in {load_s:.1f} s); "
        "three node processes on this one machine, so the three-node figure is the "
        "swarm's overhead (tasks, results and polling through the bucket) on shared cores, "
        "not a speed-up. Median of 5 runs over HTTP after a warm-up."
    )
    print()
    print(f"query: `{QUERY}`")
    print()
    print("| nodes | median s | vs one node | same result (floats to 1e-9) |")
    print("|---|---:|---:|---|")
    print(f"| 1 | {one:.3f} | 1.00 | |")
    print(f"| 3 | {three:.3f} | {three / one:.2f} | {'yes' if same(one_result, three_result) else 'NO'} |")
    print()
    print(f"Tasks run by the other nodes during the timed runs: node-b {shared['node-b']}, node-c {shared['node-c']}.")
    print()
    print(
        f"Idle node, meadow requests per minute over {IDLE_WINDOW_S} s after {IDLE_WARMUP_S} s "
        "(heartbeat puts, task polls at their cap, the clean-up chore on the lease holder; "
        "ingest on, nothing arriving), three nodes each:"
    )
    print()
    print("| heartbeat interval | requests/min per node (min / max) | goal ≤ 20 |")
    print("|---|---|---|")
    for label, rates in (("2 s (default for a local or LAN store)", lan), ("5 s (default for cloud S3)", cloud)):
        ok = "met" if max(rates) <= 20 else "not met"
        print(f"| {label} | {min(rates):.1f} / {max(rates):.1f} | {ok} |")


if __name__ == "__main__":
    main()

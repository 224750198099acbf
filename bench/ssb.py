"""Star Schema Benchmark: Apiary against DuckDB and DataFusion on the very same Parquet cells.

    python bench/ssb.py --sf 1 --out bench/results      (scripts/bench runs it)

Data is generated deterministically (seeded), written as Apiary frames; DuckDB
(`read_parquet`) and DataFusion (the `datafusion` package) read the cells those frames are
made of. Every query's result is compared across the engines before anything is timed.
Each engine runs each query in a fresh process: a warm-up, then the median of 5 runs, and
that process's peak RSS. Apiary also runs every query with its data segment limited to
512 MiB (RLIMIT_DATA; no cgroup here): a query may fail with a clear error, never crash.
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

RUNS = 5
LIMIT_MIB = 512

NATIONS = [
    ("ALGERIA", "AFRICA"), ("ARGENTINA", "AMERICA"), ("BRAZIL", "AMERICA"), ("CANADA", "AMERICA"),
    ("EGYPT", "MIDDLE EAST"), ("ETHIOPIA", "AFRICA"), ("FRANCE", "EUROPE"), ("GERMANY", "EUROPE"),
    ("INDIA", "ASIA"), ("INDONESIA", "ASIA"), ("IRAN", "MIDDLE EAST"), ("IRAQ", "MIDDLE EAST"),
    ("JAPAN", "ASIA"), ("JORDAN", "MIDDLE EAST"), ("KENYA", "AFRICA"), ("MOROCCO", "AFRICA"),
    ("MOZAMBIQUE", "AFRICA"), ("PERU", "AMERICA"), ("CHINA", "ASIA"), ("ROMANIA", "EUROPE"),
    ("SAUDI ARABIA", "MIDDLE EAST"), ("VIETNAM", "ASIA"), ("RUSSIA", "EUROPE"),
    ("UNITED KINGDOM", "EUROPE"), ("UNITED STATES", "AMERICA"),
]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

QUERIES = {
    "Q1.1": """SELECT sum(lo_extendedprice * lo_discount) AS revenue FROM lineorder, dates
        WHERE lo_orderdate = d_datekey AND d_year = 1993 AND lo_discount BETWEEN 1 AND 3
        AND lo_quantity < 25""",
    "Q1.2": """SELECT sum(lo_extendedprice * lo_discount) AS revenue FROM lineorder, dates
        WHERE lo_orderdate = d_datekey AND d_yearmonthnum = 199401
        AND lo_discount BETWEEN 4 AND 6 AND lo_quantity BETWEEN 26 AND 35""",
    "Q1.3": """SELECT sum(lo_extendedprice * lo_discount) AS revenue FROM lineorder, dates
        WHERE lo_orderdate = d_datekey AND d_weeknuminyear = 6 AND d_year = 1994
        AND lo_discount BETWEEN 5 AND 7 AND lo_quantity BETWEEN 26 AND 35""",
    "Q2.1": """SELECT sum(lo_revenue) AS revenue, d_year, p_brand1
        FROM lineorder, dates, part, supplier
        WHERE lo_orderdate = d_datekey AND lo_partkey = p_partkey AND lo_suppkey = s_suppkey
        AND p_category = 'MFGR#12' AND s_region = 'AMERICA'
        GROUP BY d_year, p_brand1 ORDER BY d_year, p_brand1""",
    "Q2.2": """SELECT sum(lo_revenue) AS revenue, d_year, p_brand1
        FROM lineorder, dates, part, supplier
        WHERE lo_orderdate = d_datekey AND lo_partkey = p_partkey AND lo_suppkey = s_suppkey
        AND p_brand1 BETWEEN 'MFGR#2221' AND 'MFGR#2228' AND s_region = 'ASIA'
        GROUP BY d_year, p_brand1 ORDER BY d_year, p_brand1""",
    "Q2.3": """SELECT sum(lo_revenue) AS revenue, d_year, p_brand1
        FROM lineorder, dates, part, supplier
        WHERE lo_orderdate = d_datekey AND lo_partkey = p_partkey AND lo_suppkey = s_suppkey
        AND p_brand1 = 'MFGR#2239' AND s_region = 'EUROPE'
        GROUP BY d_year, p_brand1 ORDER BY d_year, p_brand1""",
    "Q3.1": """SELECT c_nation, s_nation, d_year, sum(lo_revenue) AS revenue
        FROM customer, lineorder, supplier, dates
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_orderdate = d_datekey
        AND c_region = 'ASIA' AND s_region = 'ASIA' AND d_year >= 1992 AND d_year <= 1997
        GROUP BY c_nation, s_nation, d_year ORDER BY d_year ASC, revenue DESC""",
    "Q3.2": """SELECT c_city, s_city, d_year, sum(lo_revenue) AS revenue
        FROM customer, lineorder, supplier, dates
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_orderdate = d_datekey
        AND c_nation = 'UNITED STATES' AND s_nation = 'UNITED STATES'
        AND d_year >= 1992 AND d_year <= 1997
        GROUP BY c_city, s_city, d_year ORDER BY d_year ASC, revenue DESC""",
    "Q3.3": """SELECT c_city, s_city, d_year, sum(lo_revenue) AS revenue
        FROM customer, lineorder, supplier, dates
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_orderdate = d_datekey
        AND (c_city = 'UNITED KI1' OR c_city = 'UNITED KI5')
        AND (s_city = 'UNITED KI1' OR s_city = 'UNITED KI5')
        AND d_year >= 1992 AND d_year <= 1997
        GROUP BY c_city, s_city, d_year ORDER BY d_year ASC, revenue DESC""",
    "Q3.4": """SELECT c_city, s_city, d_year, sum(lo_revenue) AS revenue
        FROM customer, lineorder, supplier, dates
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_orderdate = d_datekey
        AND (c_city = 'UNITED KI1' OR c_city = 'UNITED KI5')
        AND (s_city = 'UNITED KI1' OR s_city = 'UNITED KI5') AND d_yearmonth = 'Dec1997'
        GROUP BY c_city, s_city, d_year ORDER BY d_year ASC, revenue DESC""",
    "Q4.1": """SELECT d_year, c_nation, sum(lo_revenue - lo_supplycost) AS profit
        FROM dates, customer, supplier, part, lineorder
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_partkey = p_partkey
        AND lo_orderdate = d_datekey AND c_region = 'AMERICA' AND s_region = 'AMERICA'
        AND (p_mfgr = 'MFGR#1' OR p_mfgr = 'MFGR#2')
        GROUP BY d_year, c_nation ORDER BY d_year, c_nation""",
    "Q4.2": """SELECT d_year, s_nation, p_category, sum(lo_revenue - lo_supplycost) AS profit
        FROM dates, customer, supplier, part, lineorder
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_partkey = p_partkey
        AND lo_orderdate = d_datekey AND c_region = 'AMERICA' AND s_region = 'AMERICA'
        AND (d_year = 1997 OR d_year = 1998) AND (p_mfgr = 'MFGR#1' OR p_mfgr = 'MFGR#2')
        GROUP BY d_year, s_nation, p_category ORDER BY d_year, s_nation, p_category""",
    "Q4.3": """SELECT d_year, s_city, p_brand1, sum(lo_revenue - lo_supplycost) AS profit
        FROM dates, customer, supplier, part, lineorder
        WHERE lo_custkey = c_custkey AND lo_suppkey = s_suppkey AND lo_partkey = p_partkey
        AND lo_orderdate = d_datekey AND c_region = 'AMERICA' AND s_nation = 'UNITED STATES'
        AND (d_year = 1997 OR d_year = 1998) AND p_category = 'MFGR#14'
        GROUP BY d_year, s_city, p_brand1 ORDER BY d_year, s_city, p_brand1""",
}
TABLES = ["lineorder", "dates", "customer", "supplier", "part"]


# ---------------------------------------------------------------- data


def generate(sf, seed=20261127):
    """The five SSB tables as pyarrow tables (the columns the queries use, and a few more)."""
    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("1992-01-01"), np.datetime64("1999-01-01"))
    years = days.astype("datetime64[Y]").astype(int) + 1970
    months = days.astype("datetime64[M]").astype(int) % 12 + 1
    doms = (days - days.astype("datetime64[M]")).astype(int) + 1
    doys = (days - days.astype("datetime64[Y]")).astype(int)
    datekey = years * 10000 + months * 100 + doms
    dates = pa.table({
        "d_datekey": datekey.astype(np.int64),
        "d_year": years.astype(np.int64),
        "d_yearmonthnum": (years * 100 + months).astype(np.int64),
        "d_yearmonth": [f"{MONTHS[m - 1]}{y}" for y, m in zip(years, months)],
        "d_weeknuminyear": (doys // 7 + 1).astype(np.int64),
    })

    def places(n, prefix):
        nation = rng.integers(0, len(NATIONS), n)
        names = np.array([x[0] for x in NATIONS])
        regions = np.array([x[1] for x in NATIONS])
        city = [f"{names[k][:9]:<9}{d}" for k, d in zip(nation, rng.integers(0, 10, n))]
        return {
            f"{prefix}_city": city,
            f"{prefix}_nation": names[nation],
            f"{prefix}_region": regions[nation],
        }

    n_cust, n_supp = int(30_000 * sf), int(2_000 * sf)
    n_part = int(200_000 * (1 + math.floor(math.log2(max(sf, 1)))))
    customer = pa.table({"c_custkey": np.arange(1, n_cust + 1, dtype=np.int64), **places(n_cust, "c")})
    supplier = pa.table({"s_suppkey": np.arange(1, n_supp + 1, dtype=np.int64), **places(n_supp, "s")})
    mfgr = rng.integers(1, 6, n_part)
    category = mfgr * 10 + rng.integers(1, 6, n_part)
    brand = category * 100 + rng.integers(1, 41, n_part)
    part = pa.table({
        "p_partkey": np.arange(1, n_part + 1, dtype=np.int64),
        "p_mfgr": [f"MFGR#{m}" for m in mfgr],
        "p_category": [f"MFGR#{c}" for c in category],
        "p_brand1": [f"MFGR#{b}" for b in brand],
    })
    n = int(6_000_000 * sf)
    quantity = rng.integers(1, 51, n)
    price = rng.integers(90_000, 200_000, n)
    discount = rng.integers(0, 11, n)
    extended = quantity * price // 10
    lineorder = pa.table({
        "lo_orderkey": np.arange(n, dtype=np.int64) // 4 + 1,
        "lo_linenumber": np.arange(n, dtype=np.int64) % 4 + 1,
        "lo_custkey": rng.integers(1, n_cust + 1, n),
        "lo_partkey": rng.integers(1, n_part + 1, n),
        "lo_suppkey": rng.integers(1, n_supp + 1, n),
        "lo_orderdate": datekey[rng.integers(0, len(datekey), n)].astype(np.int64),
        "lo_quantity": quantity,
        "lo_extendedprice": extended,
        "lo_discount": discount,
        "lo_revenue": extended * (100 - discount) // 100,
        "lo_supplycost": rng.integers(10_000, 120_000, n) * 6 // 10,
    })
    return {"lineorder": lineorder, "dates": dates, "customer": customer,
            "supplier": supplier, "part": part}


APIARY_TYPES = {pa.int64(): "int64", pa.string(): "utf8", pa.large_string(): "utf8"}


def load(meadow, sf):
    """Write the tables as frames ssb.s.<table>; return {table: [cell paths]}."""
    from apiary import Apiary
    import deltalake

    tables = generate(sf)
    with Apiary("ssb-load", storage=meadow) as ap:
        ap.create_hive("ssb")
        ap.create_box("ssb", "s")
        for name, t in tables.items():
            schema = {f.name: APIARY_TYPES[f.type] for f in t.schema}
            ap.create_frame("ssb", "s", name, schema)
            # In slices, as an appliance would receive them; a few cells per big table.
            step = 2_000_000
            for start in range(0, t.num_rows, step):
                ap.write_to_frame("ssb", "s", name, t.slice(start, step))
    return {
        name: [u.removeprefix("file://") for u in deltalake.DeltaTable(os.path.join(meadow, "ssb", "s", name)).file_uris()]
        for name in TABLES
    }


# ---------------------------------------------------------------- engines (one process each)


def open_engine(engine, meadow, cells):
    """A function running SQL and returning a pyarrow.Table, and a cleanup."""
    if engine == "apiary":
        from apiary import Apiary
        ap = Apiary("ssb-bench", storage=meadow)
        ap.start()
        import re
        qualify = re.compile(r"\b(" + "|".join(TABLES) + r")\b")
        return (lambda q: ap.query(qualify.sub(r"ssb.s.\1", q))), ap.shutdown
    if engine == "duckdb":
        import duckdb
        con = duckdb.connect()
        for t, files in cells.items():
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet({files!r})")
        return (lambda q: con.execute(q).to_arrow_table()), con.close
    if engine == "datafusion":
        import datafusion
        ctx = datafusion.SessionContext()
        for t, files in cells.items():
            # A directory of links to exactly the frame's cells.
            d = tempfile.mkdtemp(prefix=f"ssb-{t}-")
            for i, f in enumerate(files):
                os.symlink(f, os.path.join(d, f"{i}.parquet"))
            ctx.register_parquet(t, d)
        return (lambda q: pa.table(ctx.sql(q).to_arrow_table())), (lambda: None)
    raise SystemExit(f"unknown engine {engine}")


def peak_rss():
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def canonical(table):
    """Rows as sorted tuples of text (numbers rounded), to compare engines' results."""
    cols = [c.to_pylist() for c in table.columns]
    def cell(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)
    return sorted(tuple(cell(v) for v in row) for row in zip(*cols))


def worker(args):
    """In a child process: run one query of one engine, print JSON."""
    cells = json.loads(args.cells)
    if args.limit_mib:
        limit = args.limit_mib << 20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    run, close = open_engine(args.engine, args.meadow, cells)
    q = QUERIES[args.query]
    out = {"engine": args.engine, "query": args.query}
    try:
        result = run(q)  # warm-up
        out["rows"] = canonical(result)
        if not args.limit_mib:
            times = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                run(q)
                times.append((time.perf_counter() - t0) * 1000)
            out["median_ms"] = statistics.median(times)
        out["ok"] = True
    except Exception as e:  # reported, not fatal: the limit run wants to see these
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    out["peak_rss"] = peak_rss()
    close()
    print(json.dumps(out))


def child(engine, query, meadow, cells, limit_mib=0, env=None):
    cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--query", query,
           "--meadow", meadow, "--cells", json.dumps(cells), "--limit-mib", str(limit_mib)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"engine": engine, "query": query, "ok": False, "crashed": True,
                "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- report


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--engine")
    ap.add_argument("--query")
    ap.add_argument("--meadow")
    ap.add_argument("--cells")
    ap.add_argument("--limit-mib", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="apiary-ssb-")
    os.environ["XDG_DATA_HOME"] = os.path.join(work, "data")
    meadow = os.path.join(work, "meadow")
    t0 = time.perf_counter()
    cells = load(meadow, args.sf)
    load_s = time.perf_counter() - t0
    engines = ["apiary", "duckdb", "datafusion"]
    results = {e: {} for e in engines}
    mismatches = []
    for q in QUERIES:
        for e in engines:
            results[e][q] = child(e, q, meadow, cells)
        ref = results["duckdb"][q]
        for e in ("apiary", "datafusion"):
            r = results[e][q]
            if not r.get("ok") or r.get("rows") != ref.get("rows"):
                mismatches.append(f"{q} {e}: {r.get('error') or 'result differs from DuckDB'}")
    # Apiary under a data limit, bees sized to fit in it.
    env = dict(os.environ, APIARY_BEES="2", APIARY_MEMORY_PER_BEE="128MiB")
    limited = {q: child("apiary", q, meadow, cells, LIMIT_MIB, env) for q in QUERIES}

    lines = [
        f"## SSB at scale factor {args.sf:g}",
        "",
        f"{sum(len(v) for v in cells.values())} cells, {cells and len(cells['lineorder'])} of them "
        f"lineorder ({int(6_000_000 * args.sf):,} rows); loaded through Apiary in {load_s:.1f} s. "
        f"Median of {RUNS} runs after a warm-up, each engine in its own process per query.",
        "",
        "| query | Apiary ms | DuckDB ms | DataFusion ms | Apiary/DuckDB | Apiary/DataFusion "
        "| peak RSS MiB Apiary / DuckDB / DataFusion | same result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    ratios_duck, ratios_df = [], []
    for q in QUERIES:
        a, d, f = (results[e][q] for e in engines)
        ms = [r.get("median_ms") for r in (a, d, f)]
        same = "yes" if a.get("ok") and a.get("rows") == d.get("rows") else "**no**"
        if None in ms:
            lines.append(f"| {q} | failed | | | | | | {same} |")
            continue
        ratios_duck.append(ms[0] / ms[1])
        ratios_df.append(ms[0] / ms[2])
        rss = " / ".join(f"{r['peak_rss'] / 2**20:.0f}" for r in (a, d, f))
        lines.append(
            f"| {q} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[0] / ms[1]:.2f} "
            f"| {ms[0] / ms[2]:.2f} | {rss} | {same} |"
        )
    if ratios_duck:
        lines.append(
            f"| **geomean** | | | | **{geomean(ratios_duck):.2f}** | **{geomean(ratios_df):.2f}** | | |"
        )
    ok = sum(1 for r in limited.values() if r.get("ok"))
    crashed = [q for q, r in limited.items() if r.get("crashed")]
    failed = [f"{q} ({r.get('error')})" for q, r in limited.items() if not r.get("ok") and not r.get("crashed")]
    lines += [
        "",
        f"Apiary with its data segment limited to {LIMIT_MIB} MiB (RLIMIT_DATA, 2 bees of "
        f"128 MiB): {ok} of {len(QUERIES)} queries answered, "
        f"{len(crashed)} crashed{': ' + ', '.join(crashed) if crashed else ''}"
        f"{'; clear errors: ' + '; '.join(failed) if failed else ''}. Peak RSS there: "
        f"{max(r.get('peak_rss', 0) for r in limited.values()) / 2**20:.0f} MiB.",
        "",
        f"Results checked against DuckDB before timing: "
        f"{'all equal' if not mismatches else 'DIFFERENCES: ' + '; '.join(mismatches)}. "
        f"Whole SSB run: {time.perf_counter() - started:.0f} s.",
    ]
    os.makedirs(args.out, exist_ok=True)
    chart(ratios_duck, ratios_df, list(QUERIES), os.path.join(args.out, "ssb.png"), args.sf)
    lines.append("")
    lines.append("![Apiary time ratios per query](ssb.png)")
    print("\n".join(lines))
    if mismatches:
        sys.exit(1)


def chart(duck, df, names, path, sf):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(duck) != len(names):
        return
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, duck, 0.4, label="Apiary / DuckDB")
    ax.bar(x + 0.2, df, 0.4, label="Apiary / DataFusion")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("time ratio (lower is better for Apiary)")
    ax.set_title(f"SSB SF{sf:g}: Apiary's query time relative to its peers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

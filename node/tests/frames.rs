//! The frame suite, run against a local directory and the real S3 server: DDL, append,
//! overwrite, partitioned writes with pruning, checkpoint replay in a fresh process, time
//! travel.

mod common;

use std::sync::Arc;

use apiary::ErrorKind;
use apiary::frames::{Column, FrameDef, WriteMode};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{TestMeadow, fr, i64s, scalar, sql};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_suite_local() {
    frame_suite(common::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_suite_s3() {
    if let Some(m) = common::s3() {
        frame_suite(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_replay_local() {
    checkpoint_replay(common::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_replay_s3() {
    if let Some(m) = common::s3() {
        checkpoint_replay(m).await;
    }
}

fn cols(spec: &[(&str, &str)]) -> Vec<Column> {
    spec.iter()
        .map(|(n, t)| Column::new(n, t).unwrap())
        .collect()
}

fn batch(ids: &[i64], ps: &[&str]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("p", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(ps.to_vec())),
        ],
    )
    .unwrap()
}

async fn frame_suite(m: TestMeadow) {
    let ap = m.open().await;
    let reg = ap.frames().registry();
    let label = m.label;

    // DDL: hives, boxes, frames, idempotent re-creation, a different schema refused.
    sql(&ap, "CREATE HIVE warehouse; CREATE SCHEMA warehouse.sales").await;
    assert!(
        !reg.create_hive("warehouse").await.unwrap(),
        "{label}: second create is a no-op"
    );
    sql(
        &ap,
        "CREATE TABLE warehouse.sales.orders (id BIGINT, p VARCHAR) PARTITIONED BY (p)",
    )
    .await;
    let same = FrameDef::new(
        &fr("warehouse.sales.orders"),
        cols(&[("id", "int64"), ("p", "string")]),
        vec!["p".into()],
    )
    .unwrap();
    assert!(
        !ap.frames().create_frame(&same).await.unwrap(),
        "identical definition is idempotent"
    );
    let other = FrameDef::new(
        &fr("warehouse.sales.orders"),
        cols(&[("id", "int32"), ("p", "utf8")]),
        vec!["p".into()],
    )
    .unwrap();
    assert_eq!(
        ap.frames().create_frame(&other).await.unwrap_err().kind,
        ErrorKind::AlreadyExists
    );
    assert_eq!(reg.list_hives().await.unwrap(), vec!["warehouse"]);
    assert_eq!(reg.list_boxes("warehouse").await.unwrap(), vec!["sales"]);
    assert_eq!(
        reg.list_frames("warehouse", "sales").await.unwrap(),
        vec!["orders"]
    );
    let e = reg.list_frames("warehouse", "nope").await.unwrap_err();
    assert_eq!(e.message, "box not found: warehouse.nope");

    // Append (version 1) through the API, then through SQL (version 2).
    let r = ap
        .write(
            &fr("warehouse.sales.orders"),
            vec![batch(&[1, 2, 3, 4], &["x", "y", "z", "w"])],
            WriteMode::Append,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.version, r.rows_written, r.cells_written),
        (1, 4, 4),
        "{label}: one cell per partition"
    );
    assert!(r.bytes_written > 0);
    sql(
        &ap,
        "INSERT INTO warehouse.sales.orders VALUES (5, 'x'), (6, 'y'), (7, 'q')",
    )
    .await;
    assert_eq!(
        scalar(&ap, "SELECT count(*) FROM warehouse.sales.orders").await,
        7
    );

    // Partition pruning returns exactly the matching rows.
    let r = sql(
        &ap,
        "SELECT id FROM warehouse.sales.orders WHERE p = 'x' OR p = 'y' ORDER BY id",
    )
    .await;
    assert_eq!(
        i64s(&r.batches, 0),
        vec![Some(1), Some(2), Some(5), Some(6)],
        "{label}"
    );
    let cells = ap
        .frames()
        .meadow()
        .list_all("warehouse/sales/orders")
        .await
        .unwrap();
    assert!(
        cells
            .iter()
            .any(|c| c.contains("/p=x/") && c.ends_with(".parquet")),
        "{cells:?}"
    );

    // Two-part and one-part names after USE; joins across boxes; CTEs.
    sql(
        &ap,
        "CREATE BOX warehouse.ref; CREATE TABLE warehouse.ref.names (id BIGINT, name TEXT); \
              INSERT INTO warehouse.ref.names VALUES (1, 'one'), (5, 'five')",
    )
    .await;
    let r = sql(
        &ap,
        "USE HIVE warehouse; USE BOX sales; \
        WITH o AS (SELECT id FROM orders WHERE p = 'x') \
        SELECT o.id FROM o JOIN ref.names n ON o.id = n.id ORDER BY o.id",
    )
    .await;
    assert_eq!(i64s(&r.batches, 0), vec![Some(1), Some(5)]);

    // Overwrite replaces every row in one commit; the old version stays readable.
    let before = ap
        .frames()
        .info(&fr("warehouse.sales.orders"))
        .await
        .unwrap();
    sql(
        &ap,
        "INSERT OVERWRITE warehouse.sales.orders VALUES (100, 'x')",
    )
    .await;
    let after = ap
        .frames()
        .info(&fr("warehouse.sales.orders"))
        .await
        .unwrap();
    assert_eq!(after.version, before.version + 1);
    assert_eq!((after.row_count, after.cell_count), (1, 1));
    let r = sql(
        &ap,
        &format!(
            "SELECT count(*) FROM warehouse.sales.orders VERSION AS OF {}",
            before.version
        ),
    )
    .await;
    assert_eq!(i64s(&r.batches, 0), vec![Some(7)]);

    // Time travel to version 1: only the first append.
    let r = sql(
        &ap,
        "SELECT id FROM warehouse.sales.orders VERSION AS OF 1 ORDER BY id",
    )
    .await;
    assert_eq!(
        i64s(&r.batches, 0),
        vec![Some(1), Some(2), Some(3), Some(4)]
    );
    let r = sql(
        &ap,
        "SELECT count(*) FROM frame_at('warehouse.sales.orders', 2)",
    )
    .await;
    assert_eq!(i64s(&r.batches, 0), vec![Some(7)]);
    let e = ap
        .sql("SELECT * FROM warehouse.sales.orders VERSION AS OF 99")
        .await
        .unwrap_err();
    assert!(e.message.contains("has no version 99"), "{e}");

    // DESCRIBE and DROP.
    let r = sql(&ap, "DESCRIBE warehouse.sales.orders").await;
    assert_eq!(r.num_rows(), 2);
    sql(&ap, "DROP TABLE warehouse.sales.orders").await;
    assert!(
        reg.list_frames("warehouse", "sales")
            .await
            .unwrap()
            .is_empty()
    );
    let e = ap
        .sql("SELECT * FROM warehouse.sales.orders")
        .await
        .unwrap_err();
    assert_eq!(e.message, "frame not found: warehouse.sales.orders");
    // Re-creating a dropped frame starts empty.
    sql(
        &ap,
        "CREATE TABLE warehouse.sales.orders (id BIGINT, p VARCHAR) PARTITIONED BY (p)",
    )
    .await;
    assert_eq!(
        scalar(&ap, "SELECT count(*) FROM warehouse.sales.orders").await,
        0
    );
}

async fn checkpoint_replay(m: TestMeadow) {
    let ap = m.open().await;
    sql(
        &ap,
        "CREATE HIVE h; CREATE BOX h.b; CREATE TABLE h.b.log (id BIGINT, p TEXT)",
    )
    .await;
    let mut expected_sum = 0;
    for i in 0..150i64 {
        ap.write(&fr("h.b.log"), vec![batch(&[i], &["a"])], WriteMode::Append)
            .await
            .unwrap();
        expected_sum += i;
    }
    let log = ap
        .frames()
        .meadow()
        .list_all("h/b/log/_delta_log")
        .await
        .unwrap();
    assert!(
        log.iter().any(|p| p.ends_with(".checkpoint.parquet")),
        "a checkpoint after 100 commits: {log:?}"
    );
    // A fresh process replays checkpoint + 50 JSON entries.
    let (ok, out, err) = m.run(&[
        "sql",
        "SELECT count(*) AS n, sum(id) AS s FROM h.b.log",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("n,s\n150,{expected_sum}"));
    let info = ap.frames().info(&fr("h.b.log")).await.unwrap();
    assert_eq!(info.version, 150);
}

/// A local meadow with frame h.b.t (id, p) for the exactly-once marker tests.
async fn marked_frame() -> (common::TestMeadow, apiary::Apiary) {
    let m = common::local();
    let ap = m.open().await;
    sql(
        &ap,
        "CREATE HIVE h; CREATE BOX h.b; CREATE TABLE h.b.t (id BIGINT, p TEXT)",
    )
    .await;
    (m, ap)
}

/// Append row `v` to h.b.t with the exactly-once marker (app id "app", version `v`).
async fn append_marked(ap: &apiary::Apiary, v: i64) {
    let ctx = apiary::frames::WriteCtx {
        txn: Some(apiary::frames::Txn {
            app_id: "app".into(),
            version: v,
        }),
        session: None,
    };
    ap.frames()
        .write(
            &fr("h.b.t"),
            vec![batch(&[v], &["a"])],
            WriteMode::Append,
            ctx,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_markers_are_read_back() {
    let (_m, ap) = marked_frame().await;
    assert_eq!(
        ap.frames().txn_version(&fr("h.b.t"), "app").await.unwrap(),
        None
    );
    for v in [7, 42] {
        append_marked(&ap, v).await;
    }
    assert_eq!(
        ap.frames().txn_version(&fr("h.b.t"), "app").await.unwrap(),
        Some(42)
    );
    assert_eq!(
        ap.frames()
            .txn_version(&fr("h.b.t"), "other")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_markers_survive_checkpoints() {
    let (_m, ap) = marked_frame().await;
    for v in 1..=105i64 {
        append_marked(&ap, v).await;
    }
    let log = ap
        .frames()
        .meadow()
        .list_all("h/b/t/_delta_log")
        .await
        .unwrap();
    assert!(
        log.iter().any(|p| p.ends_with(".checkpoint.parquet")),
        "a checkpoint was written"
    );
    assert_eq!(
        ap.frames().txn_version(&fr("h.b.t"), "app").await.unwrap(),
        Some(105)
    );
}

/// Two nodes auto-creating the same frame from incoming messages: whoever makes the table,
/// the other's later steps never replace it, so rows appended in between stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creators_keep_each_others_rows() {
    let m = common::local();
    let ap = m.open().await;
    sql(&ap, "CREATE HIVE h; CREATE BOX h.b").await;
    let def = |name: &str| {
        FrameDef::new(
            &fr(&format!("h.b.{name}")),
            cols(&[("id", "int64"), ("p", "string")]),
            vec![],
        )
        .unwrap()
    };

    // A wins the registry entry and stalls before making the table; B's create finds A's
    // definition, makes the table, and appends; then A carries on.
    let (a, b) = (def("t"), def("t"));
    assert!(ap.frames().registry().create_frame(&a).await.unwrap());
    assert_eq!(
        scalar(&ap, "SELECT count(*) FROM h.b.t").await,
        0,
        "readable meanwhile"
    );
    assert!(!ap.frames().create_frame(&b).await.unwrap());
    ap.write(
        &fr("h.b.t"),
        vec![batch(&[1, 2, 3], &["x", "y", "z"])],
        WriteMode::Append,
    )
    .await
    .unwrap();
    assert!(!ap.frames().create_frame(&a).await.unwrap());
    assert_eq!(scalar(&ap, "SELECT count(*) FROM h.b.t").await, 3);

    // Many at once, on fresh frames: every append lands.
    let ap = Arc::new(ap);
    for round in 0..10 {
        let name = format!("r{round}");
        let mut tasks = Vec::new();
        for w in 0..4i64 {
            let (ap, def) = (ap.clone(), def(&name));
            tasks.push(tokio::spawn(async move {
                ap.frames().create_frame(&def).await.unwrap();
                ap.write(
                    &def.frame,
                    vec![batch(&[w, w + 10], &["a", "b"])],
                    WriteMode::Append,
                )
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            scalar(&ap, &format!("SELECT count(*) FROM h.b.{name}")).await,
            8,
            "round {round}"
        );
    }
}

/// A star join: fact ⋈ dates ⋈ filtered dimension. The second join builds its hash table on
/// the filtered dimension, not on the fact-sized output of the first (DataFusion's own
/// estimate of that output is the dates table's size), and the answer is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_joins_build_on_the_small_side() {
    let m = common::local();
    let ap = m.open().await;
    sql(
        &ap,
        "CREATE HIVE s; CREATE BOX s.b; \
         CREATE TABLE s.b.fact (k BIGINT, d BIGINT, v BIGINT); \
         CREATE TABLE s.b.dates (d BIGINT, y BIGINT); \
         CREATE TABLE s.b.dim (k BIGINT, cat TEXT); \
         INSERT INTO s.b.fact SELECT value % 500, value % 20, value FROM generate_series(1, 20000); \
         INSERT INTO s.b.dates SELECT value, 1990 + value % 3 FROM generate_series(0, 19); \
         INSERT INTO s.b.dim SELECT value, CASE WHEN value % 50 = 0 THEN 'x' ELSE 'y' END \
             FROM generate_series(0, 499)",
    )
    .await;
    let q = "SELECT y, sum(v) AS total FROM s.b.fact, s.b.dates, s.b.dim \
             WHERE fact.d = dates.d AND fact.k = dim.k AND cat = 'x' GROUP BY y ORDER BY y";
    let plan = sql(&ap, &format!("EXPLAIN {q}")).await;
    let text = format!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&plan.batches).unwrap()
    );
    let lines: Vec<&str> = text.lines().collect();
    let join = lines
        .iter()
        .position(|l| l.contains("HashJoinExec") && l.contains("k@"))
        .unwrap_or_else(|| panic!("{text}"));
    // The build side is listed first under the join: the dimension's filter comes before
    // the inner join of fact and dates.
    let after = &lines[join + 1..];
    let filter = after.iter().position(|l| l.contains("FilterExec: cat"));
    let inner = after.iter().position(|l| l.contains("HashJoinExec"));
    assert!(
        filter < inner,
        "the build side is the filtered dimension:\n{text}"
    );
    let r = sql(&ap, q).await;
    let expected: i64 = (1..=20000i64).filter(|v| (v % 500) % 50 == 0).sum();
    let got: i64 = i64s(&r.batches, 1).into_iter().map(|v| v.unwrap()).sum();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_update_local() {
    delete_and_update(common::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_update_s3() {
    if let Some(m) = common::s3() {
        delete_and_update(m).await;
    }
}

/// One string per row: the frame's rows as CSV lines, in order.
async fn rows(apiary: &apiary::Apiary, query: &str) -> Vec<String> {
    let r = sql(apiary, query).await;
    let csv = apiary::output::encode(apiary::output::Format::Csv, &r.schema, &r.batches).unwrap();
    String::from_utf8(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// DELETE and UPDATE through SQL: the matching rows change in one commit each, the count comes
/// back, time travel still sees the rows before, and bad input changes nothing.
async fn delete_and_update(meadow: TestMeadow) {
    let apiary = meadow.open().await;
    sql(
        &apiary,
        "CREATE HIVE h; CREATE BOX h.b; \
         CREATE FRAME h.b.t (id BIGINT, v DOUBLE, s STRING, day STRING) PARTITIONED BY (day)",
    )
    .await;
    sql(
        &apiary,
        "INSERT INTO h.b.t VALUES (1, 1.5, 'a', 'd1'), (2, 2.5, 'b', 'd1'), \
         (3, 3.5, 'c', 'd2'), (4, 4.5, 'd', 'd2')",
    )
    .await;
    let inserted = apiary.frames().info(&fr("h.b.t")).await.unwrap().version;
    let label = meadow.label;
    let count = |r: apiary::sql::QueryResult| i64s(&r.batches, 0);
    assert_eq!(
        count(sql(&apiary, "DELETE FROM h.b.t WHERE id % 2 = 0").await),
        [Some(2)]
    );
    assert_eq!(
        rows(&apiary, "SELECT id FROM h.b.t ORDER BY id").await,
        ["1", "3"],
        "{label}"
    );
    let updated = sql(
        &apiary,
        "UPDATE h.b.t SET v = v * 10, s = 'new' WHERE day = 'd2'",
    )
    .await;
    assert_eq!(count(updated), [Some(1)]);
    assert_eq!(
        rows(&apiary, "SELECT id, v, s, day FROM h.b.t ORDER BY id").await,
        ["1,1.5,a,d1", "3,35.0,new,d2"],
        "{label}"
    );
    let before = format!("SELECT count(*) FROM h.b.t VERSION AS OF {inserted}");
    assert_eq!(
        rows(&apiary, &before).await,
        ["4"],
        "time travel sees the rows before"
    );

    // Bad input: a clear error, nothing changed.
    for (bad, want) in [
        ("DELETE FROM h.b.t WHERE nope = 1", "nope"),
        ("UPDATE h.b.t SET nope = 1", "no column nope"),
        (
            "UPDATE h.b.t SET v = 1 WHERE no_such_fn(id) = 1",
            "no_such_fn",
        ),
        ("DELETE FROM h.b.t WHERE id IN (SELECT 1)", "subquery"),
        ("DELETE FROM h.b.missing", "missing"),
    ] {
        let e = apiary.sql(bad).await.unwrap_err();
        assert!(e.to_string().contains(want), "{label}: {bad}: {e}");
    }
    assert_eq!(
        rows(&apiary, "SELECT id, v, s FROM h.b.t ORDER BY id").await,
        ["1,1.5,a", "3,35.0,new"]
    );
    // ADD COLUMN: rows written before read it as null; new rows carry it; UPDATE sets it.
    sql(&apiary, "ALTER FRAME h.b.t ADD COLUMN note STRING").await;
    sql(
        &apiary,
        "INSERT INTO h.b.t VALUES (5, 5.5, 'e', 'd1', 'added')",
    )
    .await;
    sql(&apiary, "UPDATE h.b.t SET note = 'set' WHERE id = 1").await;
    assert_eq!(
        rows(&apiary, "SELECT id, note FROM h.b.t ORDER BY id").await,
        ["1,set", "3,", "5,added"],
        "{label}"
    );
    let e = apiary
        .sql("ALTER TABLE h.b.t ADD COLUMN note BIGINT")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    sql(&apiary, "ALTER TABLE h.b.t ADD IF NOT EXISTS note BIGINT").await;
    assert_eq!(count(sql(&apiary, "DELETE FROM h.b.t").await).len(), 1);
    assert_eq!(
        rows(&apiary, "SELECT count(*) FROM h.b.t").await,
        ["0"],
        "{label}"
    );

    // DROP BOX and DROP HIVE: refused while they hold something, unless CASCADE.
    let e = apiary.sql("DROP BOX h.b").await.unwrap_err();
    assert!(
        e.to_string().contains("box h.b is not empty (frames t)"),
        "{e}"
    );
    let e = apiary.sql("DROP HIVE h").await.unwrap_err();
    assert!(
        e.to_string().contains("hive h is not empty (boxes b)"),
        "{e}"
    );
    sql(
        &apiary,
        "CREATE BOX h.spare; DROP BOX h.spare; DROP BOX IF EXISTS h.spare",
    )
    .await;
    assert_eq!(
        apiary.sql("DROP BOX h.spare").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    sql(&apiary, "DROP HIVE h CASCADE").await;
    assert!(rows(&apiary, "SHOW HIVES").await.is_empty(), "{label}");
    let e = apiary.sql("SELECT * FROM h.b.t").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

/// A DELETE racing appends: no appended row is lost, and the DELETE either commits (every row
/// it matched is gone) or fails as a conflict (none is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_appends_loses_no_row() {
    let meadow = common::local();
    let apiary = Arc::new(meadow.open().await);
    sql(
        &apiary,
        "CREATE HIVE h; CREATE BOX h.b; CREATE FRAME h.b.r (id BIGINT, tag STRING)",
    )
    .await;
    sql(
        &apiary,
        "INSERT INTO h.b.r SELECT value, 'old' FROM generate_series(1, 100)",
    )
    .await;
    let appender = {
        let apiary = apiary.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let from = 1000 + i * 10;
                let insert = format!(
                    "INSERT INTO h.b.r SELECT value, 'new' FROM generate_series({from}, {})",
                    from + 9
                );
                sql(&apiary, &insert).await;
            }
        })
    };
    let deleted = apiary.sql("DELETE FROM h.b.r WHERE tag = 'old'").await;
    appender.await.unwrap();
    let new = rows(&apiary, "SELECT count(*) FROM h.b.r WHERE tag = 'new'").await;
    assert_eq!(new, ["200"], "every appended row is there");
    let old = rows(&apiary, "SELECT count(*) FROM h.b.r WHERE tag = 'old'").await;
    match deleted {
        Ok(_) => assert_eq!(
            old,
            ["0"],
            "the DELETE committed: every row it matched is gone"
        ),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
            assert_eq!(old, ["100"], "the DELETE failed: none is gone");
        }
    }
}

//! WASM UDFs end to end: the udf-sdk examples (built for wasm32-wasip2 by scripts/test)
//! uploaded on one node and called from SQL on another, hostile ones stopped at their limits
//! while other queries carry on, and bad uploads refused with nothing stored.

mod common;

use std::path::PathBuf;

use apiary::{Apiary, ErrorKind};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("apiary-test-{}", uuid::Uuid::new_v4()))
}

fn f64s(result: &apiary::sql::QueryResult, col: usize) -> Vec<Option<f64>> {
    result
        .batches
        .iter()
        .flat_map(|b| {
            let a = b.column(col).as_primitive::<Float64Type>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Process A uploads `celsius_to_f` with the CLI; process B, another node with its own state
/// dir (so nothing compiled yet), calls it from SQL. Results match the same formula in SQL,
/// and null temperatures stay null.
fn cli_round_trip(m: &common::TestMeadow) {
    let (a, b) = (state_dir(), state_dir());
    let run = |state: &PathBuf, args: &[&str]| {
        let out = m.cli_node(&m.uri, state).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    run(
        &a,
        &[
            "sql",
            "CREATE HIVE h; CREATE BOX h.b; CREATE TABLE h.b.f (id int64, temp float64); \
             INSERT INTO h.b.f SELECT value, CASE WHEN value % 10 = 0 THEN NULL \
             ELSE (value - 500) / 7.0 END FROM generate_series(1, 1000)",
        ],
    );
    let added = run(
        &a,
        &[
            "udf",
            "add",
            "celsius_to_f",
            common::udf_example("celsius_to_f").to_str().unwrap(),
        ],
    );
    assert!(
        added.contains("celsius_to_f(float64) -> float64"),
        "{added}"
    );
    let listed = run(&b, &["udf", "list"]);
    assert!(listed.contains("\"celsius_to_f\""), "{listed}");

    let out = run(
        &b,
        &[
            "sql",
            "--format",
            "json",
            "SELECT id, celsius_to_f(temp) AS wasm, temp * 9.0 / 5.0 + 32.0 AS native \
             FROM h.b.f ORDER BY id",
        ],
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1000);
    let mut nulls = 0;
    for row in &rows {
        let (w, n) = (row.get("wasm"), row.get("native"));
        match (w, n) {
            (None | Some(serde_json::Value::Null), None | Some(serde_json::Value::Null)) => {
                nulls += 1
            }
            (Some(w), Some(n)) => {
                let (w, n) = (w.as_f64().unwrap(), n.as_f64().unwrap());
                assert!((w - n).abs() <= 1e-9 * n.abs().max(1.0), "{row}");
            }
            _ => panic!("null in one column only: {row}"),
        }
    }
    assert_eq!(nulls, 100, "every null temperature gives a null");
}

#[test]
fn a_udf_uploaded_by_one_process_runs_in_another_local() {
    cli_round_trip(&common::local());
}

#[test]
fn a_udf_uploaded_by_one_process_runs_in_another_s3() {
    if let Some(m) = common::s3() {
        cli_round_trip(&m);
    }
}

/// Two nodes on one meadow: what one adds or drops, the other sees at its next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_added_and_dropped_on_one_node_show_on_another_without_restart() {
    let m = common::local();
    let mut ca = m.config();
    ca.node.state_dir = state_dir();
    let mut cb = m.config();
    cb.node.state_dir = state_dir();
    let node_a = Apiary::open(ca).await.unwrap();
    let node_b = Apiary::open(cb).await.unwrap();
    let mut on_a = node_a.session();
    let mut on_b = node_b.session();

    let q = "SELECT slugify('Hello, World!  Again') AS s, dew_point(20.0, 50.0) AS d, \
             dew_point(20.0, 0.0) AS bad";
    let e = on_b.run(q).await.unwrap_err();
    assert!(e.message.contains("slugify"), "{e}");

    let path = common::udf_example("slugify");
    on_a.run(&format!(
        "CREATE FUNCTION slugify AS '{}' LANGUAGE wasm",
        path.display()
    ))
    .await
    .unwrap();
    on_a.run(&format!(
        "CREATE FUNCTION dew_point AS 'file://{}'",
        common::udf_example("dew_point").display()
    ))
    .await
    .unwrap();

    let r = on_b.run(q).await.unwrap();
    let batch = &r.batches[0];
    assert_eq!(
        batch.column(0).as_string::<i32>().value(0),
        "hello-world-again"
    );
    let d = f64s(&r, 1)[0].unwrap();
    assert!((d - 9.2552).abs() < 1e-3, "dew point {d}");
    assert_eq!(f64s(&r, 2), vec![None], "humidity 0 gives null");

    // Same name, other bytes: refused unless replaced.
    let e = on_a
        .run(&format!(
            "CREATE FUNCTION slugify AS '{}'",
            common::udf_example("celsius_to_f").display()
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    // Re-adding the same component is a no-op.
    on_a.run(&format!("CREATE FUNCTION slugify AS '{}'", path.display()))
        .await
        .unwrap();

    on_a.run("DROP FUNCTION slugify").await.unwrap();
    let e = on_b.run(q).await.unwrap_err();
    assert!(e.message.contains("slugify"), "{e}");
    let e = on_a.run("DROP FUNCTION slugify").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    on_a.run("DROP FUNCTION IF EXISTS slugify").await.unwrap();

    let e = on_b.run("SELECT dew_point(1.0)").await.unwrap_err();
    assert!(e.message.contains("takes 2 argument"), "{e}");
    let e = on_a
        .run("CREATE FUNCTION f AS '/nonexistent/f.wasm'")
        .await
        .unwrap_err();
    assert!(e.message.contains("cannot read /nonexistent/f.wasm"), "{e}");
}

/// Random bytes, a core module, a component of another world, bad names: each refused with a
/// message that says why, and nothing lands in the meadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_uploads_are_refused_and_nothing_is_stored() {
    let m = common::local();
    let ap = m.open().await;
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, bytes::Bytes, &str)> = vec![
        ("t_noise", random.into(), "not WebAssembly"),
        ("t_empty", bytes::Bytes::new(), "not WebAssembly"),
        (
            "t_core",
            bytes::Bytes::from_static(b"\0asm\x01\0\0\0"),
            "a core WebAssembly module, not a component",
        ),
        (
            "t_command",
            common::udf_wasm("not_a_udf"),
            "does not implement the apiary:udf/scalar world",
        ),
        (
            "t_truncated",
            common::udf_wasm("celsius_to_f").slice(..5000),
            "not a valid WebAssembly component",
        ),
        (
            "1abc",
            common::udf_wasm("celsius_to_f"),
            "bad function name",
        ),
        ("a-b", common::udf_wasm("celsius_to_f"), "bad function name"),
        (
            "abs",
            common::udf_wasm("celsius_to_f"),
            "built-in SQL function",
        ),
    ];
    for (name, bytes, says) in cases {
        let e = ap.udfs().add(name, bytes, false).await.unwrap_err();
        assert!(e.message.contains(says), "{name}: {e}");
    }
    assert!(ap.udfs().list().await.unwrap().is_empty());
    assert!(
        ap.meadow()
            .list_all("_apiary/udfs")
            .await
            .unwrap()
            .is_empty(),
        "nothing stored"
    );

    // The CLI says the same, and exits non-zero.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"definitely not wasm").unwrap();
    let (ok, _, err) = m.run(&["udf", "add", "junk", junk.path().to_str().unwrap()]);
    assert!(!ok && err.contains("not WebAssembly"), "{err}");
    let (ok, _, err) = m.run(&["udf", "add", "x", "/nonexistent.wasm"]);
    assert!(
        !ok && err.contains("cannot read /nonexistent.wasm"),
        "{err}"
    );
    let (ok, _, err) = m.run(&["udf", "rm", "nosuch"]);
    assert!(!ok && err.contains("function not found: nosuch"), "{err}");
    let (ok, _, err) = m.run(&["udf", "add", "onlyname"]);
    assert!(!ok && err.contains("FILE"), "{err}");
}

//! Eight processes append 25 commits each to one frame at once: every row lands exactly
//! once and the Delta log has versions 0..=200 with no gaps. Run on a local directory and on
//! the real S3 server (conditional writes are the only lock).

mod common;

use std::collections::BTreeSet;

use common::{TestMeadow, i64s, sql};

const WRITERS: i64 = 8;
const COMMITS: i64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_local() {
    eight_writers(common::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_s3() {
    if let Some(m) = common::s3() {
        eight_writers(m).await;
    }
}

async fn eight_writers(m: TestMeadow) {
    let ap = m.open().await;
    sql(
        &ap,
        "CREATE HIVE h; CREATE BOX h.b; CREATE TABLE h.b.t (writer BIGINT, seq BIGINT)",
    )
    .await;
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            let script: String = (0..COMMITS)
                .map(|i| format!("INSERT INTO h.b.t VALUES ({w}, {i});"))
                .collect();
            m.cli()
                .args(["sql", &script])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        let out = c.wait().unwrap();
        assert!(out.success(), "{}: a writer failed", m.label);
    }
    let r = sql(&ap, "SELECT writer, seq FROM h.b.t").await;
    let writers = i64s(&r.batches, 0);
    let seqs = i64s(&r.batches, 1);
    let rows: Vec<(i64, i64)> = writers
        .iter()
        .zip(&seqs)
        .map(|(w, s)| (w.unwrap(), s.unwrap()))
        .collect();
    let unique: BTreeSet<_> = rows.iter().copied().collect();
    assert_eq!(
        rows.len(),
        (WRITERS * COMMITS) as usize,
        "{}: every row once",
        m.label
    );
    assert_eq!(unique.len(), rows.len(), "{}: no duplicates", m.label);
    let expected: BTreeSet<_> = (0..WRITERS)
        .flat_map(|w| (0..COMMITS).map(move |i| (w, i)))
        .collect();
    assert_eq!(unique, expected);

    let versions: BTreeSet<u64> = ap
        .frames()
        .meadow()
        .list_all("h/b/t/_delta_log")
        .await
        .unwrap()
        .iter()
        .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
        .collect();
    let want: BTreeSet<u64> = (0..=(WRITERS * COMMITS) as u64).collect();
    assert_eq!(versions, want, "{}: contiguous versions 0..=200", m.label);
}

use super::*;

fn cells(n: usize) -> Vec<Cell> {
    (0..n)
        .map(|i| Cell {
            path: format!("part-{i:03}.parquet"),
            bytes: 1000 + (i as u64 % 7),
            key: format!("k{i}"),
        })
        .collect()
}

fn node(id: &str, weight: f64, cached: &[usize]) -> Candidate {
    Candidate {
        node: id.into(),
        local: id == "here",
        weight,
        cached: cached.iter().map(|i| format!("k{i}")).collect(),
    }
}

fn count(a: &[Assigned], id: &str) -> (usize, usize) {
    a.iter()
        .find(|t| t.node == id)
        .map_or((0, 0), |t| (t.cells.len(), t.cached))
}

#[test]
fn cells_are_shared_by_weight_and_every_cell_once() {
    let cs = cells(90);
    let a = assign(
        &cs,
        &[
            node("here", 1.0, &[]),
            node("b", 2.0, &[]),
            node("c", 0.0001, &[]),
        ],
    );
    let mut all: Vec<&str> = a
        .iter()
        .flat_map(|t| t.cells.iter().map(|c| c.path.as_str()))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 90, "each cell exactly once");
    let (here, b) = (count(&a, "here").0, count(&a, "b").0);
    assert!(
        (28..=32).contains(&here) && (58..=62).contains(&b),
        "{here} {b}"
    );
    assert_eq!(count(&a, "c").0, 0, "a hot node gets next to nothing");
    // Deterministic.
    let again = assign(
        &cs,
        &[
            node("here", 1.0, &[]),
            node("b", 2.0, &[]),
            node("c", 0.0001, &[]),
        ],
    );
    assert_eq!(format!("{a:?}"), format!("{again:?}"));
}

#[test]
fn cached_cells_go_to_their_holder_within_its_share() {
    let cs = cells(90);
    let held: Vec<usize> = (60..90).collect();
    let a = assign(
        &cs,
        &[
            node("here", 1.0, &[]),
            node("b", 1.0, &held),
            node("c", 1.0, &[]),
        ],
    );
    assert_eq!(count(&a, "b"), (30, 30), "b gets exactly what it holds");
    // Holding more than its share: it keeps what fits (a quarter above its share).
    let held: Vec<usize> = (0..90).collect();
    let a = assign(
        &cs,
        &[
            node("here", 1.0, &[]),
            node("b", 1.0, &held),
            node("c", 1.0, &[]),
        ],
    );
    let (b, cached) = count(&a, "b");
    assert_eq!(b, cached);
    assert!((30..=38).contains(&b), "{b}");
    assert!(count(&a, "here").0 > 20 && count(&a, "c").0 > 20);
}

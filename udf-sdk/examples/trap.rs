//! Hostile: panics (a trap in the component).

#[apiary_udf::udf]
fn trap(x: i64) -> i64 {
    if x >= 0 {
        panic!("trap example: refusing {x}");
    }
    x
}

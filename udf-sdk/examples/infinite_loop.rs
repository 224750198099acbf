//! Hostile: never returns. The host's time limit must stop it.

#[apiary_udf::udf(volatile)]
fn infinite_loop(x: i64) -> i64 {
    let mut n = x;
    loop {
        n = std::hint::black_box(n.wrapping_mul(3).wrapping_add(1));
    }
}

//! Hostile: allocates without end. The host's memory limit must stop it.

#[apiary_udf::udf(volatile)]
fn memory_bomb(x: i64) -> i64 {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
        if hoard.len() == usize::MAX {
            return x;
        }
    }
}

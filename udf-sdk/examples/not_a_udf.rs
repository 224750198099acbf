//! Not a UDF: a WASI command component (exports `wasi:cli/run`, not the apiary:udf world).
//! Upload must refuse it.

fn main() {
    println!("hello from a command component");
}

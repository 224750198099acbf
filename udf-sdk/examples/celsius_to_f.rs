//! Degrees Celsius to Fahrenheit.

#[apiary_udf::udf]
fn celsius_to_f(c: f64) -> f64 {
    c * 9.0 / 5.0 + 32.0
}

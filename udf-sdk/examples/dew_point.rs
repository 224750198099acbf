//! Dew point (°C) from temperature (°C) and relative humidity (%), Magnus formula.
//! Humidity outside (0, 100] gives null.

#[apiary_udf::udf]
fn dew_point(temp: f64, humidity: f64) -> Option<f64> {
    if !(humidity > 0.0 && humidity <= 100.0) {
        return None;
    }
    let (b, c) = (17.62, 243.12);
    let gamma = (humidity / 100.0).ln() + b * temp / (c + temp);
    Some(c * gamma / (b - gamma))
}

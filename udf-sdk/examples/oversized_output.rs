//! Hostile: returns far more values than the batch has rows, written against the raw
//! bindings since `#[udf]` cannot get this wrong.

use apiary_udf::{Column, DataType, Guest, Signature, Values};

struct Oversized;

impl Guest for Oversized {
    fn describe() -> Signature {
        Signature {
            name: "oversized_output".into(),
            args: vec![DataType::Int64],
            returns: DataType::Int64,
            deterministic: true,
        }
    }

    fn invoke(_args: Vec<Column>, rows: u32) -> Result<Column, String> {
        let len = rows.saturating_mul(64).max(1 << 20);
        Ok(Column {
            len,
            validity: None,
            values: Values::Int64(vec![7; len as usize]),
        })
    }
}

apiary_udf::export_raw!(Oversized with_types_in apiary_udf::bindings);

//! Column type strings (the Python SDK's, plus common SQL spellings) and their Arrow types.
//! Delta has no unsigned integers, so unsigned columns are stored in the next wider signed
//! type (`uint64` in `int64`, refusing values above its maximum when cast).

use arrow::datatypes::{DataType, TimeUnit};

use crate::error::{Error, Result};

/// The canonical type names, as `DESCRIBE` and the registry show them.
pub const TYPE_NAMES: &[&str] = &[
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "utf8",
    "boolean",
    "binary",
    "date",
    "timestamp",
];

/// Canonical name of a type string, or `InvalidInput` naming the accepted ones.
pub fn canonical(type_str: &str) -> Result<&'static str> {
    let t = type_str.trim().to_ascii_lowercase();
    let t = t.split('(').next().unwrap_or("").trim(); // VARCHAR(20), DECIMAL-free types only
    Ok(match t {
        "int8" | "tinyint" => "int8",
        "int16" | "smallint" => "int16",
        "int32" | "int" | "integer" => "int32",
        "int64" | "bigint" | "long" => "int64",
        "uint8" => "uint8",
        "uint16" => "uint16",
        "uint32" => "uint32",
        "uint64" => "uint64",
        "float32" | "float" | "real" => "float32",
        "float64" | "double" | "double precision" => "float64",
        "utf8" | "string" | "text" | "varchar" | "char" | "character varying" => "utf8",
        "boolean" | "bool" => "boolean",
        "binary" | "bytes" | "bytea" | "varbinary" | "blob" => "binary",
        "date" | "date32" => "date",
        "timestamp" | "datetime" | "timestamptz" | "timestamp with time zone" => "timestamp",
        _ => {
            return Err(Error::invalid(format!(
                "unknown column type {type_str:?}; use one of: {}",
                TYPE_NAMES.join(", ")
            )));
        }
    })
}

/// The Arrow type a column of this type string is stored as.
pub fn arrow_type(type_str: &str) -> Result<DataType> {
    Ok(match canonical(type_str)? {
        "int8" => DataType::Int8,
        "int16" | "uint8" => DataType::Int16,
        "int32" | "uint16" => DataType::Int32,
        "int64" | "uint32" | "uint64" => DataType::Int64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "utf8" => DataType::Utf8,
        "boolean" => DataType::Boolean,
        "binary" => DataType::Binary,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        other => unreachable!("canonical() returned {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_types() {
        assert_eq!(canonical("INT").unwrap(), "int32");
        assert_eq!(canonical("Integer").unwrap(), "int32");
        assert_eq!(canonical("double").unwrap(), "float64");
        assert_eq!(canonical("string").unwrap(), "utf8");
        assert_eq!(canonical("VARCHAR(20)").unwrap(), "utf8");
        assert_eq!(canonical("datetime").unwrap(), "timestamp");
        assert_eq!(canonical("bytes").unwrap(), "binary");
        assert_eq!(canonical("date32").unwrap(), "date");
        for t in TYPE_NAMES {
            assert_eq!(canonical(t).unwrap(), *t);
            arrow_type(t).unwrap();
        }
    }

    #[test]
    fn unknown_types_are_invalid_not_text() {
        let e = canonical("varchar2000x").unwrap_err();
        assert!(e.message.contains("unknown column type"), "{e}");
        assert!(canonical("").is_err());
        assert!(canonical("decimal(10,2)").is_err());
    }
}

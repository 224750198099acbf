//! Column types (with the Python SDK's names and common SQL spellings) and their Arrow types.
//! Delta has no unsigned integers, so unsigned columns are stored in the next wider signed
//! type (`uint64` in `int64`, refusing values above its maximum when cast).

use arrow::datatypes::{DataType, TimeUnit};

use crate::error::{Error, Result};

/// A column's type: what `DESCRIBE` shows and the registry keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Utf8,
    Boolean,
    Binary,
    Date,
    Timestamp,
}

impl ColumnType {
    pub const ALL: [ColumnType; 15] = [
        ColumnType::Int8,
        ColumnType::Int16,
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::UInt8,
        ColumnType::UInt16,
        ColumnType::UInt32,
        ColumnType::UInt64,
        ColumnType::Float32,
        ColumnType::Float64,
        ColumnType::Utf8,
        ColumnType::Boolean,
        ColumnType::Binary,
        ColumnType::Date,
        ColumnType::Timestamp,
    ];

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int8 => "int8",
            ColumnType::Int16 => "int16",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::UInt8 => "uint8",
            ColumnType::UInt16 => "uint16",
            ColumnType::UInt32 => "uint32",
            ColumnType::UInt64 => "uint64",
            ColumnType::Float32 => "float32",
            ColumnType::Float64 => "float64",
            ColumnType::Utf8 => "utf8",
            ColumnType::Boolean => "boolean",
            ColumnType::Binary => "binary",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// The Arrow type a column of this type is stored as.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 | ColumnType::UInt8 => DataType::Int16,
            ColumnType::Int32 | ColumnType::UInt16 => DataType::Int32,
            ColumnType::Int64 | ColumnType::UInt32 | ColumnType::UInt64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Binary => DataType::Binary,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// For unsigned types (kept in a wider signed one), the largest value they hold.
    pub fn unsigned_max(self) -> Option<i64> {
        match self {
            ColumnType::UInt8 => Some(u8::MAX.into()),
            ColumnType::UInt16 => Some(u16::MAX.into()),
            ColumnType::UInt32 => Some(u32::MAX.into()),
            ColumnType::UInt64 => Some(i64::MAX),
            _ => None,
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A type's canonical name or one of its aliases (the Python SDK's, common SQL spellings).
impl std::str::FromStr for ColumnType {
    type Err = Error;
    fn from_str(type_str: &str) -> Result<ColumnType> {
        let t = type_str.trim().to_ascii_lowercase();
        let t = t.split('(').next().unwrap_or("").trim(); // VARCHAR(20)
        Ok(match t {
            "int8" | "tinyint" => ColumnType::Int8,
            "int16" | "smallint" => ColumnType::Int16,
            "int32" | "int" | "integer" => ColumnType::Int32,
            "int64" | "bigint" | "long" => ColumnType::Int64,
            "uint8" => ColumnType::UInt8,
            "uint16" => ColumnType::UInt16,
            "uint32" => ColumnType::UInt32,
            "uint64" => ColumnType::UInt64,
            "float32" | "float" | "real" => ColumnType::Float32,
            "float64" | "double" | "double precision" => ColumnType::Float64,
            "utf8" | "string" | "text" | "varchar" | "char" | "character varying" => {
                ColumnType::Utf8
            }
            "boolean" | "bool" => ColumnType::Boolean,
            "binary" | "bytes" | "bytea" | "varbinary" | "blob" => ColumnType::Binary,
            "date" | "date32" => ColumnType::Date,
            "timestamp" | "datetime" | "timestamptz" | "timestamp with time zone" => {
                ColumnType::Timestamp
            }
            _ => {
                let names: Vec<&str> = ColumnType::ALL.iter().map(|t| t.name()).collect();
                return Err(Error::invalid(format!(
                    "unknown column type {type_str:?}; use one of: {}",
                    names.join(", ")
                )));
            }
        })
    }
}

impl serde::Serialize for ColumnType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Registry entries written before the enum kept the type as the user spelt it.
impl<'de> serde::Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_types() {
        let t = |s: &str| s.parse::<ColumnType>().unwrap();
        assert_eq!(t("INT"), ColumnType::Int32);
        assert_eq!(t("Integer"), ColumnType::Int32);
        assert_eq!(t("double"), ColumnType::Float64);
        assert_eq!(t("string"), ColumnType::Utf8);
        assert_eq!(t("VARCHAR(20)"), ColumnType::Utf8);
        assert_eq!(t("datetime"), ColumnType::Timestamp);
        assert_eq!(t("bytes"), ColumnType::Binary);
        assert_eq!(t("date32"), ColumnType::Date);
        for ty in ColumnType::ALL {
            assert_eq!(t(ty.name()), ty);
        }
    }

    #[test]
    fn unknown_types_are_invalid_not_text() {
        let e = "varchar2000x".parse::<ColumnType>().unwrap_err();
        assert!(e.message.contains("unknown column type"), "{e}");
        assert!("".parse::<ColumnType>().is_err());
        assert!("decimal(10,2)".parse::<ColumnType>().is_err());
    }
}

//! Arrow arrays to and from the contract's columns. Each buffer is one bulk copy; what comes
//! back from a guest is checked before it becomes an Arrow array (a hostile guest cannot
//! make the host read out of bounds or build an invalid array).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};

use super::host::{Column, Utf8Values, Values, WitType};

/// The Arrow type a contract type travels as.
pub fn arrow_type(t: WitType) -> DataType {
    match t {
        WitType::Int64 => DataType::Int64,
        WitType::Float64 => DataType::Float64,
        WitType::Boolean => DataType::Boolean,
        WitType::Utf8 => DataType::Utf8,
        WitType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

pub fn type_name(t: WitType) -> &'static str {
    match t {
        WitType::Int64 => "int64",
        WitType::Float64 => "float64",
        WitType::Boolean => "boolean",
        WitType::Utf8 => "utf8",
        WitType::Timestamp => "timestamp",
    }
}

pub fn parse_type(name: &str) -> Option<WitType> {
    Some(match name {
        "int64" => WitType::Int64,
        "float64" => WitType::Float64,
        "boolean" => WitType::Boolean,
        "utf8" => WitType::Utf8,
        "timestamp" => WitType::Timestamp,
        _ => return None,
    })
}

fn value_type(v: &Values) -> WitType {
    match v {
        Values::Int64(_) => WitType::Int64,
        Values::Float64(_) => WitType::Float64,
        Values::Boolean(_) => WitType::Boolean,
        Values::Utf8(_) => WitType::Utf8,
        Values::Timestamp(_) => WitType::Timestamp,
    }
}

/// Bits `[0, len)` of a bitmap as whole bytes starting at bit 0.
fn bitmap(bits: &BooleanBuffer) -> Vec<u8> {
    let bytes = bits.sliced();
    bytes.as_slice()[..bits.len().div_ceil(8)].to_vec()
}

/// `array` must already have the Arrow type of `t`.
pub fn to_column(array: &ArrayRef, t: WitType) -> Column {
    let len = array.len();
    let validity = array
        .nulls()
        .filter(|n| n.null_count() > 0)
        .map(|n| bitmap(n.inner()));
    let values = match t {
        WitType::Int64 => Values::Int64(array.as_primitive::<Int64Type>().values().to_vec()),
        WitType::Float64 => Values::Float64(array.as_primitive::<Float64Type>().values().to_vec()),
        WitType::Timestamp => Values::Timestamp(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec(),
        ),
        WitType::Boolean => Values::Boolean(bitmap(array.as_boolean().values())),
        WitType::Utf8 => {
            let s = array.as_string::<i32>();
            let offsets = s.value_offsets();
            let (first, last) = (offsets[0], offsets[len]);
            Values::Utf8(Utf8Values {
                offsets: offsets.iter().map(|o| o - first).collect(),
                data: s.value_data()[first as usize..last as usize].to_vec(),
            })
        }
    };
    Column {
        len: len as u32,
        validity,
        values,
    }
}

/// Check a guest's result against the batch and the declared type, then wrap it without
/// copying.
pub fn from_column(col: Column, t: WitType, rows: usize) -> Result<ArrayRef, String> {
    if col.len as usize != rows {
        return Err(format!(
            "returned {} values for a batch of {rows} rows",
            col.len
        ));
    }
    let got = value_type(&col.values);
    if got != t {
        return Err(format!(
            "returned {} values but declares {}",
            type_name(got),
            type_name(t)
        ));
    }
    let bitmap_bytes = rows.div_ceil(8);
    let nulls = match col.validity {
        None => None,
        Some(bits) if bits.len() >= bitmap_bytes => Some(NullBuffer::new(BooleanBuffer::new(
            Buffer::from_vec(bits),
            0,
            rows,
        ))),
        Some(bits) => {
            return Err(format!(
                "returned a validity bitmap of {} bytes for {rows} rows",
                bits.len()
            ));
        }
    };
    let wrong_len = |n: usize| format!("returned {n} values where its column says {rows}");
    let array: ArrayRef = match col.values {
        Values::Int64(v) if v.len() == rows => {
            Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls))
        }
        Values::Float64(v) if v.len() == rows => {
            Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
        }
        Values::Timestamp(v) if v.len() == rows => Arc::new(
            TimestampMicrosecondArray::new(ScalarBuffer::from(v), nulls).with_timezone("UTC"),
        ),
        Values::Boolean(bits) if bits.len() >= bitmap_bytes => Arc::new(BooleanArray::new(
            BooleanBuffer::new(Buffer::from_vec(bits), 0, rows),
            nulls,
        )),
        Values::Utf8(u) => {
            let Utf8Values { offsets, data } = u;
            if offsets.len() != rows + 1 {
                return Err(wrong_len(offsets.len().saturating_sub(1)));
            }
            if offsets[0] < 0
                || offsets.windows(2).any(|w| w[0] > w[1])
                || offsets[rows] as usize > data.len()
            {
                return Err("returned utf8 offsets that are not increasing within its data".into());
            }
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            Arc::new(
                StringArray::try_new(offsets, Buffer::from_vec(data), nulls)
                    .map_err(|e| format!("returned invalid utf8: {e}"))?,
            )
        }
        Values::Int64(v) | Values::Timestamp(v) => {
            return Err(wrong_len(v.len()));
        }
        Values::Float64(v) => return Err(wrong_len(v.len())),
        Values::Boolean(bits) => {
            return Err(format!(
                "returned a boolean bitmap of {} bytes for {rows} rows",
                bits.len()
            ));
        }
    };
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(array: ArrayRef, t: WitType) -> ArrayRef {
        let rows = array.len();
        from_column(to_column(&array, t), t, rows).unwrap()
    }

    #[test]
    fn sliced_arrays_cross_with_their_own_offsets_and_nulls() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            None,
            Some(3),
            Some(4),
            None,
            Some(6),
            Some(7),
            Some(8),
            Some(9),
            None,
        ]));
        let sliced = ints.slice(3, 7);
        assert_eq!(
            round_trip(sliced.clone(), WitType::Int64).as_ref(),
            sliced.as_ref()
        );

        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("ccc"),
            Some("dd"),
            Some(""),
            None,
            Some("gé"),
        ]));
        let sliced = strings.slice(2, 5);
        let col = to_column(&sliced, WitType::Utf8);
        let Values::Utf8(u) = &col.values else {
            panic!("utf8")
        };
        assert_eq!(u.offsets[0], 0, "offsets rebased to the slice");
        assert_eq!(
            round_trip(sliced.clone(), WitType::Utf8).as_ref(),
            sliced.as_ref()
        );

        let bools: ArrayRef = Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(true),
            Some(false),
            Some(true),
            None,
            Some(false),
            Some(true),
        ]));
        let sliced = bools.slice(1, 9);
        assert_eq!(
            round_trip(sliced.clone(), WitType::Boolean).as_ref(),
            sliced.as_ref()
        );
    }

    #[test]
    fn malformed_guest_columns_are_refused() {
        let col = |len: u32, validity: Option<Vec<u8>>, values: Values| Column {
            len,
            validity,
            values,
        };
        let utf8 = |offsets: Vec<i32>, data: &[u8]| {
            Values::Utf8(Utf8Values {
                offsets,
                data: data.to_vec(),
            })
        };
        let cases = [
            (
                col(3, None, Values::Int64(vec![1, 2, 3])),
                WitType::Int64,
                2,
                "returned 3 values for a batch of 2",
            ),
            (
                col(2, None, Values::Int64(vec![1])),
                WitType::Int64,
                2,
                "returned 1 values",
            ),
            (
                col(2, None, Values::Float64(vec![1.0, 2.0])),
                WitType::Int64,
                2,
                "returned float64 values but declares int64",
            ),
            (
                col(9, Some(vec![0xff]), Values::Int64(vec![0; 9])),
                WitType::Int64,
                9,
                "validity bitmap of 1 bytes",
            ),
            (
                col(9, None, Values::Boolean(vec![0])),
                WitType::Boolean,
                9,
                "boolean bitmap of 1 bytes",
            ),
            (
                col(2, None, utf8(vec![0, 2, 1], b"ab")),
                WitType::Utf8,
                2,
                "not increasing",
            ),
            (
                col(2, None, utf8(vec![0, 1, 9], b"ab")),
                WitType::Utf8,
                2,
                "not increasing",
            ),
            (
                col(2, None, utf8(vec![0, 1], b"ab")),
                WitType::Utf8,
                2,
                "returned 1 values",
            ),
            (
                col(1, None, utf8(vec![0, 2], &[0xff, 0xfe])),
                WitType::Utf8,
                1,
                "invalid utf8",
            ),
        ];
        for (c, t, rows, says) in cases {
            let e = from_column(c, t, rows).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}

//! Write Apiary SQL functions in Rust.
//!
//! ```ignore
//! #[apiary_udf::udf]
//! fn celsius_to_f(c: f64) -> f64 {
//!     c * 9.0 / 5.0 + 32.0
//! }
//! ```
//!
//! `cargo build --target wasm32-wasip2 --release` makes a WebAssembly component that
//! `apiary udf add celsius_to_f target/wasm32-wasip2/release/<crate>.wasm` uploads. The
//! contract is `wit/udf.wit`: one call per record batch, columns in Arrow's layout.

pub use apiary_udf_macros::udf;

/// The generated bindings of `wit/udf.wit`. Implement [`Guest`] by hand (and export it with
/// [`export_raw!`]) only when `#[udf]` does not fit.
pub mod bindings {
    wit_bindgen::generate!({
        world: "scalar",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "apiary_udf::bindings",
    });
}

pub use bindings::apiary::udf::types::{Column, DataType, Signature, Utf8Values, Values};
pub use bindings::{Guest, export_raw};

/// A timestamp: microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

/// A type a UDF takes as an argument.
pub trait Arg<'a>: Sized {
    const TYPE: DataType;
    /// The column's values, resolved once per batch.
    type View: Copy;
    fn view(col: &'a Column) -> Self::View;
    /// The value at row `i`; `None` skips the call and gives a null (unless `Self` is an
    /// `Option`, which sees the null itself).
    fn get(view: Self::View, i: usize, valid: bool) -> Option<Self>;
}

/// The validity bitmap of a column, `None` when every value is valid.
#[inline]
pub fn validity(col: &Column) -> Option<&[u8]> {
    col.validity.as_deref()
}

#[inline]
pub fn is_valid(bits: Option<&[u8]>, i: usize) -> bool {
    bits.is_none_or(|b| b[i >> 3] >> (i & 7) & 1 == 1)
}

fn wrong_type(col: &Column, expected: DataType) -> ! {
    panic!(
        "apiary-udf: column of {:?} where {expected:?} was expected",
        data_type(&col.values)
    )
}

fn data_type(values: &Values) -> DataType {
    match values {
        Values::Int64(_) => DataType::Int64,
        Values::Float64(_) => DataType::Float64,
        Values::Boolean(_) => DataType::Boolean,
        Values::Utf8(_) => DataType::Utf8,
        Values::Timestamp(_) => DataType::Timestamp,
    }
}

/// An argument type: the column variant it reads and how to read row `$i` of its view.
macro_rules! arg {
    ($t:ty, $view:ty, $variant:ident, |$v:ident, $i:ident| $get:expr) => {
        impl<'a> Arg<'a> for $t {
            const TYPE: DataType = DataType::$variant;
            type View = $view;
            #[inline]
            fn view(col: &'a Column) -> Self::View {
                match &col.values {
                    Values::$variant(v) => v,
                    _ => wrong_type(col, <Self as Arg>::TYPE),
                }
            }
            #[inline]
            fn get($v: Self::View, $i: usize, valid: bool) -> Option<Self> {
                valid.then(|| $get)
            }
        }
    };
}

arg!(i64, &'a [i64], Int64, |v, i| v[i]);
arg!(f64, &'a [f64], Float64, |v, i| v[i]);
arg!(Timestamp, &'a [i64], Timestamp, |v, i| Timestamp(v[i]));
arg!(bool, &'a [u8], Boolean, |v, i| v[i >> 3] >> (i & 7) & 1
    == 1);
arg!(&'a str, &'a Utf8Values, Utf8, |u, i| {
    let bytes = &u.data[u.offsets[i] as usize..u.offsets[i + 1] as usize];
    // The host hands over Arrow utf8 arrays, which are valid UTF-8.
    std::str::from_utf8(bytes).expect("utf8 column holds valid UTF-8")
});

/// `Option<T>` sees nulls itself instead of skipping the call.
impl<'a, T: Arg<'a>> Arg<'a> for Option<T> {
    const TYPE: DataType = T::TYPE;
    type View = T::View;
    #[inline]
    fn view(col: &'a Column) -> Self::View {
        T::view(col)
    }
    #[inline]
    fn get(view: Self::View, i: usize, valid: bool) -> Option<Self> {
        Some(T::get(view, i, valid))
    }
}

/// A type a UDF returns.
pub trait Ret: Sized {
    const TYPE: DataType;
    type Builder;
    fn builder(rows: usize) -> Self::Builder;
    fn push(self, out: &mut Self::Builder) -> Result<(), String>;
    fn push_null(out: &mut Self::Builder);
    fn finish(out: Self::Builder) -> Column;
    /// Append a run of non-null results (the no-nulls fast path; fixed-width types override
    /// it with one `Vec::extend` the compiler can vectorise).
    #[inline]
    fn extend(
        out: &mut Self::Builder,
        values: impl ExactSizeIterator<Item = Self>,
    ) -> Result<(), String> {
        for v in values {
            v.push(out)?;
        }
        Ok(())
    }
}

/// Validity bits, only materialised once a null shows up.
#[derive(Default)]
pub struct Validity {
    len: usize,
    bits: Option<Vec<u8>>,
}

impl Validity {
    #[inline]
    fn valid(&mut self) {
        if let Some(bits) = &mut self.bits {
            set_bit(bits, self.len, true);
        }
        self.len += 1;
    }

    /// The finished column: its length and validity with `values`.
    fn column(self, values: Values) -> Column {
        Column {
            len: self.len as u32,
            validity: self.bits,
            values,
        }
    }

    fn null(&mut self) {
        let len = self.len;
        let bits = self.bits.get_or_insert_with(|| {
            let mut b = vec![0xff; len.div_ceil(8)];
            if !len.is_multiple_of(8) {
                b[len >> 3] = (1u8 << (len & 7)) - 1;
            }
            b
        });
        set_bit(bits, len, false);
        self.len += 1;
    }
}

/// A result column of a fixed-width type.
pub struct PrimitiveBuilder<T> {
    values: Vec<T>,
    validity: Validity,
}

macro_rules! primitive_ret {
    ($t:ty, $raw:ty, $variant:ident, |$v:ident| $unwrap:expr) => {
        impl Ret for $t {
            const TYPE: DataType = DataType::$variant;
            type Builder = PrimitiveBuilder<$raw>;
            fn builder(rows: usize) -> Self::Builder {
                PrimitiveBuilder {
                    values: Vec::with_capacity(rows),
                    validity: Validity::default(),
                }
            }
            #[inline]
            fn push(self, out: &mut Self::Builder) -> Result<(), String> {
                let $v = self;
                out.values.push($unwrap);
                out.validity.valid();
                Ok(())
            }
            fn push_null(out: &mut Self::Builder) {
                out.values.push(Default::default());
                out.validity.null();
            }
            fn finish(out: Self::Builder) -> Column {
                out.validity.column(Values::$variant(out.values))
            }
            #[inline]
            fn extend(
                out: &mut Self::Builder,
                values: impl ExactSizeIterator<Item = Self>,
            ) -> Result<(), String> {
                if out.validity.bits.is_some() {
                    for v in values {
                        v.push(out)?;
                    }
                    return Ok(());
                }
                out.validity.len += values.len();
                out.values.extend(values.map(|$v| $unwrap));
                Ok(())
            }
        }
    };
}

primitive_ret!(i64, i64, Int64, |v| v);
primitive_ret!(f64, f64, Float64, |v| v);
primitive_ret!(Timestamp, i64, Timestamp, |v| v.0);

impl Ret for bool {
    const TYPE: DataType = DataType::Boolean;
    type Builder = PrimitiveBuilder<u8>;
    fn builder(rows: usize) -> Self::Builder {
        PrimitiveBuilder {
            values: Vec::with_capacity(rows.div_ceil(8)),
            validity: Validity::default(),
        }
    }
    #[inline]
    fn push(self, out: &mut Self::Builder) -> Result<(), String> {
        set_bit(&mut out.values, out.validity.len, self);
        out.validity.valid();
        Ok(())
    }
    fn push_null(out: &mut Self::Builder) {
        set_bit(&mut out.values, out.validity.len, false);
        out.validity.null();
    }
    fn finish(out: Self::Builder) -> Column {
        out.validity.column(Values::Boolean(out.values))
    }
}

/// A utf8 result column.
pub struct Utf8Builder {
    values: Utf8Values,
    validity: Validity,
}

impl Utf8Builder {
    #[inline]
    fn push_str(&mut self, s: &str) {
        self.values.data.extend_from_slice(s.as_bytes());
        let end = i32::try_from(self.values.data.len()).expect("a utf8 result column over 2 GiB");
        self.values.offsets.push(end);
        self.validity.valid();
    }
}

macro_rules! utf8_ret {
    ($t:ty, |$v:ident| $as_str:expr) => {
        impl Ret for $t {
            const TYPE: DataType = DataType::Utf8;
            type Builder = Utf8Builder;
            fn builder(rows: usize) -> Self::Builder {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Utf8Builder {
                    values: Utf8Values {
                        offsets,
                        data: Vec::new(),
                    },
                    validity: Validity::default(),
                }
            }
            #[inline]
            fn push(self, out: &mut Self::Builder) -> Result<(), String> {
                let $v = self;
                out.push_str($as_str);
                Ok(())
            }
            fn push_null(out: &mut Self::Builder) {
                let end = *out.values.offsets.last().expect("offsets start at 0");
                out.values.offsets.push(end);
                out.validity.null();
            }
            fn finish(out: Self::Builder) -> Column {
                out.validity.column(Values::Utf8(out.values))
            }
        }
    };
}

utf8_ret!(String, |v| &v);
utf8_ret!(&str, |v| v);

impl<T: Ret> Ret for Option<T> {
    const TYPE: DataType = T::TYPE;
    type Builder = T::Builder;
    fn builder(rows: usize) -> Self::Builder {
        T::builder(rows)
    }
    #[inline]
    fn push(self, out: &mut Self::Builder) -> Result<(), String> {
        match self {
            Some(v) => v.push(out),
            None => {
                T::push_null(out);
                Ok(())
            }
        }
    }
    fn push_null(out: &mut Self::Builder) {
        T::push_null(out)
    }
    fn finish(out: Self::Builder) -> Column {
        T::finish(out)
    }
}

/// An error fails the query with its message.
impl<T: Ret, E: std::fmt::Display> Ret for Result<T, E> {
    const TYPE: DataType = T::TYPE;
    type Builder = T::Builder;
    fn builder(rows: usize) -> Self::Builder {
        T::builder(rows)
    }
    #[inline]
    fn push(self, out: &mut Self::Builder) -> Result<(), String> {
        self.map_err(|e| e.to_string())?.push(out)
    }
    fn push_null(out: &mut Self::Builder) {
        T::push_null(out)
    }
    fn finish(out: Self::Builder) -> Column {
        T::finish(out)
    }
}

#[inline]
fn set_bit(bits: &mut Vec<u8>, i: usize, value: bool) {
    if i >> 3 >= bits.len() {
        bits.push(0);
    }
    if value {
        bits[i >> 3] |= 1 << (i & 7);
    } else {
        bits[i >> 3] &= !(1 << (i & 7));
    }
}

/// Check the host's columns against the declared signature.
pub fn check_args(args: &[Column], types: &[DataType], rows: usize) -> Result<(), String> {
    if args.len() != types.len() {
        return Err(format!(
            "takes {} arguments, got {}",
            types.len(),
            args.len()
        ));
    }
    for (i, (col, ty)) in args.iter().zip(types).enumerate() {
        let buffers_ok = match &col.values {
            Values::Int64(v) | Values::Timestamp(v) => v.len() == rows,
            Values::Float64(v) => v.len() == rows,
            Values::Boolean(b) => b.len() >= rows.div_ceil(8),
            Values::Utf8(u) => u.offsets.len() == rows + 1,
        };
        let validity_ok = col
            .validity
            .as_ref()
            .is_none_or(|b| b.len() >= rows.div_ceil(8));
        if data_type(&col.values) != *ty || col.len as usize != rows || !buffers_ok || !validity_ok
        {
            return Err(format!(
                "argument {}: expected {rows} values of {ty:?}, got {} of {:?}",
                i + 1,
                col.len,
                data_type(&col.values)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64_column(values: &[Option<f64>]) -> Column {
        let mut b = <Option<f64> as Ret>::builder(values.len());
        for v in values {
            Ret::push(*v, &mut b).unwrap();
        }
        <Option<f64> as Ret>::finish(b)
    }

    #[test]
    fn validity_appears_only_with_a_null_and_keeps_earlier_bits() {
        let all = f64_column(&[Some(1.0); 10]);
        assert_eq!(all.validity, None);
        let mut values = vec![Some(1.0); 11];
        values[9] = None;
        let col = f64_column(&values);
        assert_eq!(col.len, 11);
        // rows 0..=8 valid, 9 null, 10 valid: 0b1111_1111, 0b0000_0101
        assert_eq!(col.validity, Some(vec![0xff, 0b101]));
        let v = validity(&col);
        assert!((0..11).all(|i| is_valid(v, i) == (i != 9)));
        let view = <f64 as Arg>::view(&col);
        assert_eq!(<f64 as Arg>::get(view, 10, is_valid(v, 10)), Some(1.0));
        assert_eq!(<f64 as Arg>::get(view, 9, is_valid(v, 9)), None);
        assert_eq!(<Option<f64> as Arg>::get(view, 9, false), Some(None));
    }

    #[test]
    fn strings_and_booleans_round_trip() {
        let mut b = <Option<String> as Ret>::builder(3);
        for v in [Some("ab".to_string()), None, Some("ç".to_string())] {
            Ret::push(v, &mut b).unwrap();
        }
        let col = <Option<String> as Ret>::finish(b);
        let view = <&str as Arg>::view(&col);
        let v = validity(&col);
        let got: Vec<Option<&str>> = (0..3)
            .map(|i| <&str as Arg>::get(view, i, is_valid(v, i)))
            .collect();
        assert_eq!(got, vec![Some("ab"), None, Some("ç")]);

        let mut b = <bool as Ret>::builder(9);
        for i in 0..9 {
            Ret::push(i % 3 == 0, &mut b).unwrap();
        }
        let col = <bool as Ret>::finish(b);
        let view = <bool as Arg>::view(&col);
        assert!((0..9).all(|i| <bool as Arg>::get(view, i, true) == Some(i % 3 == 0)));
    }

    #[test]
    fn host_columns_are_checked_against_the_signature() {
        let col = f64_column(&[Some(1.0), Some(2.0)]);
        assert!(check_args(std::slice::from_ref(&col), &[DataType::Float64], 2).is_ok());
        let e = check_args(std::slice::from_ref(&col), &[DataType::Int64], 2).unwrap_err();
        assert!(e.contains("argument 1"), "{e}");
        assert!(check_args(&[col], &[DataType::Float64], 3).is_err());
        assert!(
            check_args(&[], &[DataType::Float64], 1)
                .unwrap_err()
                .contains("takes 1")
        );
    }

    #[test]
    fn errors_from_the_function_fail_the_batch() {
        let mut b = <Result<f64, String> as Ret>::builder(1);
        let e = Ret::push(Err::<f64, String>("no".into()), &mut b).unwrap_err();
        assert_eq!(e, "no");
    }
}

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
    /// The value at row `i`, `None` when it is null.
    fn get(col: &'a Column, i: usize) -> Option<Self>;
}

fn is_valid(col: &Column, i: usize) -> bool {
    col.validity
        .as_ref()
        .is_none_or(|bits| bits[i >> 3] >> (i & 7) & 1 == 1)
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

macro_rules! primitive_arg {
    ($t:ty, $variant:ident, $wrap:expr) => {
        impl<'a> Arg<'a> for $t {
            const TYPE: DataType = DataType::$variant;
            #[inline]
            fn get(col: &'a Column, i: usize) -> Option<Self> {
                match &col.values {
                    Values::$variant(v) => is_valid(col, i).then(|| $wrap(v[i])),
                    _ => wrong_type(col, <Self as Arg>::TYPE),
                }
            }
        }
    };
}

primitive_arg!(i64, Int64, |v| v);
primitive_arg!(f64, Float64, |v| v);
primitive_arg!(Timestamp, Timestamp, Timestamp);

impl<'a> Arg<'a> for bool {
    const TYPE: DataType = DataType::Boolean;
    #[inline]
    fn get(col: &'a Column, i: usize) -> Option<Self> {
        match &col.values {
            Values::Boolean(bits) => is_valid(col, i).then(|| bits[i >> 3] >> (i & 7) & 1 == 1),
            _ => wrong_type(col, <Self as Arg>::TYPE),
        }
    }
}

impl<'a> Arg<'a> for &'a str {
    const TYPE: DataType = DataType::Utf8;
    #[inline]
    fn get(col: &'a Column, i: usize) -> Option<Self> {
        match &col.values {
            Values::Utf8(u) => is_valid(col, i).then(|| {
                let bytes = &u.data[u.offsets[i] as usize..u.offsets[i + 1] as usize];
                // The host hands over Arrow utf8 arrays, which are valid UTF-8.
                std::str::from_utf8(bytes).expect("utf8 column holds valid UTF-8")
            }),
            _ => wrong_type(col, <Self as Arg>::TYPE),
        }
    }
}

/// `Option<T>` sees nulls itself instead of skipping the call.
impl<'a, T: Arg<'a>> Arg<'a> for Option<T> {
    const TYPE: DataType = T::TYPE;
    #[inline]
    fn get(col: &'a Column, i: usize) -> Option<Self> {
        Some(T::get(col, i))
    }
}

/// A type a UDF returns.
pub trait Ret {
    const TYPE: DataType;
    fn push(self, out: &mut ColumnBuilder) -> Result<(), String>;
}

macro_rules! ret {
    ($t:ty, $variant:ident, |$v:ident, $vals:ident| $push:expr) => {
        impl Ret for $t {
            const TYPE: DataType = DataType::$variant;
            #[inline]
            fn push(self, out: &mut ColumnBuilder) -> Result<(), String> {
                let $v = self;
                match &mut out.values {
                    Values::$variant($vals) => $push,
                    _ => unreachable!("builder made for the return type"),
                }
                out.push_valid();
                Ok(())
            }
        }
    };
}

ret!(i64, Int64, |v, vals| vals.push(v));
ret!(f64, Float64, |v, vals| vals.push(v));
ret!(Timestamp, Timestamp, |v, vals| vals.push(v.0));
ret!(String, Utf8, |v, vals| push_str(vals, &v));
ret!(&str, Utf8, |v, vals| push_str(vals, v));

impl Ret for bool {
    const TYPE: DataType = DataType::Boolean;
    #[inline]
    fn push(self, out: &mut ColumnBuilder) -> Result<(), String> {
        match &mut out.values {
            Values::Boolean(bits) => set_bit(bits, out.len, self),
            _ => unreachable!("builder made for the return type"),
        }
        out.push_valid();
        Ok(())
    }
}

impl<T: Ret> Ret for Option<T> {
    const TYPE: DataType = T::TYPE;
    #[inline]
    fn push(self, out: &mut ColumnBuilder) -> Result<(), String> {
        match self {
            Some(v) => v.push(out),
            None => {
                out.push_null();
                Ok(())
            }
        }
    }
}

/// An error fails the query with its message.
impl<T: Ret, E: std::fmt::Display> Ret for Result<T, E> {
    const TYPE: DataType = T::TYPE;
    #[inline]
    fn push(self, out: &mut ColumnBuilder) -> Result<(), String> {
        self.map_err(|e| e.to_string())?.push(out)
    }
}

fn set_bit(bits: &mut Vec<u8>, i: usize, value: bool) {
    if i >> 3 >= bits.len() {
        bits.push(0);
    }
    if value {
        bits[i >> 3] |= 1 << (i & 7);
    }
}

fn push_str(u: &mut Utf8Values, s: &str) {
    u.data.extend_from_slice(s.as_bytes());
    let end = i32::try_from(u.data.len()).expect("a utf8 result column over 2 GiB");
    u.offsets.push(end);
}

/// Builds the result column one row at a time.
pub struct ColumnBuilder {
    len: usize,
    nulls: usize,
    validity: Vec<u8>,
    values: Values,
}

impl ColumnBuilder {
    pub fn new(ty: DataType, rows: usize) -> ColumnBuilder {
        let values = match ty {
            DataType::Int64 => Values::Int64(Vec::with_capacity(rows)),
            DataType::Float64 => Values::Float64(Vec::with_capacity(rows)),
            DataType::Timestamp => Values::Timestamp(Vec::with_capacity(rows)),
            DataType::Boolean => Values::Boolean(Vec::with_capacity(rows.div_ceil(8))),
            DataType::Utf8 => Values::Utf8(Utf8Values {
                offsets: {
                    let mut o = Vec::with_capacity(rows + 1);
                    o.push(0);
                    o
                },
                data: Vec::new(),
            }),
        };
        ColumnBuilder {
            len: 0,
            nulls: 0,
            validity: Vec::with_capacity(rows.div_ceil(8)),
            values,
        }
    }

    #[inline]
    fn push_valid(&mut self) {
        set_bit(&mut self.validity, self.len, true);
        self.len += 1;
    }

    /// Append a null (a placeholder value under a cleared validity bit).
    pub fn push_null(&mut self) {
        match &mut self.values {
            Values::Int64(v) | Values::Timestamp(v) => v.push(0),
            Values::Float64(v) => v.push(0.0),
            Values::Boolean(bits) => set_bit(bits, self.len, false),
            Values::Utf8(u) => u
                .offsets
                .push(*u.offsets.last().expect("offsets start at 0")),
        }
        set_bit(&mut self.validity, self.len, false);
        self.nulls += 1;
        self.len += 1;
    }

    pub fn finish(self) -> Column {
        Column {
            len: self.len as u32,
            validity: (self.nulls > 0).then_some(self.validity),
            values: self.values,
        }
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
        if data_type(&col.values) != *ty || col.len as usize != rows {
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

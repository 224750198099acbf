//! Apiary: a lakehouse for small computers. See DESIGN.md for the map of the parts.

pub mod api;
pub mod bees;
pub mod config;
pub mod error;
pub mod frames;
pub mod ingest;
pub mod input;
pub mod meadow;
pub mod sql;
pub mod telemetry;
pub mod udf;

pub use api::Apiary;
pub use error::{Error, ErrorKind, Result};

//! Apiary: a lakehouse for small computers. See DESIGN.md for the map of the parts.

pub mod api;
pub mod bees;
pub mod cache;
pub mod config;
pub mod error;
pub mod frames;
pub mod http;
pub mod ingest;
pub mod input;
pub mod meadow;
pub mod output;
pub mod remote;
pub mod service;
pub mod sql;
pub mod swarm;
pub mod telemetry;
pub mod udf;

pub use api::Apiary;
pub use error::{Error, ErrorKind, Result};

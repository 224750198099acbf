//! Apiary: a lakehouse for small computers. The map of the parts is `docs/architecture.md`.

pub mod api;
pub mod bees;
pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
pub mod frames;
pub mod http;
pub mod ingest;
pub mod input;
pub mod layout;
pub mod meadow;
pub mod names;
pub mod node;
pub mod output;
pub mod remote;
pub mod service;
pub mod sql;
pub mod swarm;
pub mod telemetry;
pub mod udf;

pub use api::Apiary;
pub use error::{Error, ErrorKind, Result};

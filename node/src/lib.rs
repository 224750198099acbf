//! Apiary: a lakehouse for small computers. The map of the parts is `docs/architecture.md`.
//!
//! The public API is what the command line, the Python package and the tests use: the
//! `pub` modules below and the re-exports. Everything else is the crate's own.

pub mod api;
pub mod bees;
pub(crate) mod cache;
pub(crate) mod clock;
pub mod config;
pub mod error;
pub mod frames;
pub(crate) mod http;
pub mod ingest;
pub mod input;
pub(crate) mod layout;
pub mod meadow;
pub mod names;
pub mod node;
pub mod output;
pub mod release;
pub mod remote;
pub(crate) mod secret;
pub mod service;
pub mod sql;
pub(crate) mod swarm;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod udf;

pub use api::Apiary;
pub use error::{Error, ErrorKind, Result};
pub use frames::{Column, ColumnType, FrameDef, WriteMode};
pub use names::FrameRef;
pub use node::{Node, Services};

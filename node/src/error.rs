//! One error type for the whole node. Its kinds are the ones users see (and the Python
//! exception classes): each message says what failed and where.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Conflict,
    Unsupported,
    InvalidInput,
    /// Every bee is busy or the node is too hot: try again after this long.
    Busy {
        retry_after_ms: u64,
    },
    Timeout,
    /// A task needed more memory (or disk) than its chamber allows.
    ResourcesExhausted,
    Storage,
    Internal,
}

impl ErrorKind {
    /// The snake-case name the HTTP API (and its clients) use for the kind.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Busy { .. } => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ResourcesExhausted => "resources_exhausted",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind a name stands for; `busy` with `retry_after_ms` (from a `Retry-After`).
    pub fn from_name(name: &str, retry_after_ms: u64) -> Option<ErrorKind> {
        [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Conflict,
            ErrorKind::Unsupported,
            ErrorKind::InvalidInput,
            ErrorKind::Busy { retry_after_ms },
            ErrorKind::Timeout,
            ErrorKind::ResourcesExhausted,
            ErrorKind::Storage,
            ErrorKind::Internal,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    pub fn is_busy(self) -> bool {
        matches!(self, ErrorKind::Busy { .. })
    }
}

/// An error: its kind (what callers branch on), a message for people, and the error it
/// came from (kept for `source()` chains and logs, never parsed).
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, m)
    }
    pub fn storage(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn busy(m: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::new(ErrorKind::Busy { retry_after_ms }, m)
    }

    /// Keep the error this one came from.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// For `Busy`: how long the caller should wait before trying again.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::Busy { retry_after_ms } => Some(retry_after_ms),
            _ => None,
        }
    }

    /// Prefix the message with where the error happened.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after_ms() {
            Some(ms) => write!(f, "{} (retry after {ms} ms)", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        // Our own errors travel through DataFusion wrapped as External: unwrap them back.
        let root = e.find_root();
        if let D::External(inner) = root
            && let Some(ours) = inner.downcast_ref::<Error>()
        {
            return ours.clone();
        }
        if let D::SQL(parse_error, _) = root {
            let msg = parse_error.to_string();
            let msg = msg.strip_prefix("sql parser error: ").unwrap_or(&msg);
            return Error::invalid(format!("SQL syntax error: {msg}"));
        }
        let kind = match root {
            D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => {
                ErrorKind::InvalidInput
            }
            D::ArrowError(..) | D::Execution(_) => ErrorKind::InvalidInput,
            D::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
            D::ObjectStore(_) | D::IoError(_) => ErrorKind::Storage,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e.strip_backtrace()).with_source(e)
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

impl From<deltalake::DeltaTableError> for Error {
    fn from(e: deltalake::DeltaTableError) -> Self {
        use deltalake::DeltaTableError as D;
        if let D::ObjectStore { source } = e {
            return source.into();
        }
        let ours = match &e {
            D::Arrow { source } => Error::invalid(source.to_string()),
            D::InvalidVersion(v) => Error::not_found(format!("frame version {v} does not exist")),
            D::Transaction { source } => Error::conflict(format!("commit failed: {source}")),
            D::NotATable(p) => Error::not_found(format!("no frame data at {p}")),
            other => Error::storage(other.to_string()),
        };
        ours.with_source(e)
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as O;
        let ours = match &e {
            O::NotFound { path, .. } => Error::not_found(format!("object not found: {path}")),
            O::AlreadyExists { path, .. } => {
                Error::already_exists(format!("object already exists: {path}"))
            }
            O::Precondition { path, .. } => {
                Error::conflict(format!("object changed concurrently: {path}"))
            }
            O::NotImplemented { .. } => Error::unsupported(e.to_string()),
            _ => Error::storage(e.to_string()),
        };
        ours.with_source(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::invalid(e.to_string()).with_source(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::storage(e.to_string()).with_source(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::invalid(format!("bad JSON: {e}")).with_source(e)
    }
}

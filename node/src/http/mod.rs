//! The node's HTTP API: SQL with results streamed as Arrow IPC, JSON or CSV; UDF upload;
//! status, swarm, colony, bees, frames and ingest as JSON; Prometheus metrics; a status page.
//! Every route but `/healthz` needs the node's token (`Authorization: Bearer <token>`, or
//! HTTP Basic with the token as password, which browsers can send for the page).

mod metrics;
mod page;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};

use crate::api::Apiary;
use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::output::{Encoder, Format};
use crate::sql::Output;
use crate::sql::statement::{self, Statement};

pub use metrics::Metrics;

/// Request headers naming the session's hive and box before the SQL runs (what `USE` set
/// in an earlier request); a response carries them back as they are after it.
pub const HIVE_HEADER: &str = "apiary-hive";
pub const BOX_HEADER: &str = "apiary-box";
/// Longest a request may take to arrive and be answered (SQL: to its first byte; its run
/// is bounded by the chamber's deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a client may take to send its request headers or finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of a refused request's body read before answering.
const DRAIN_LIMIT: usize = 1 << 20;
/// Batches a slow reader may leave waiting: what bounds a streamed result's memory.
const STREAM_BUFFER: usize = 2;

struct AppState {
    apiary: Arc<Apiary>,
    /// The ingestion running beside this server, if any.
    ingest: Option<crate::ingest::IngestMonitor>,
    token_digest: [u8; 32],
    metrics: Metrics,
}

/// A running HTTP server.
pub struct Server {
    addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stop accepting connections (by `deadline`).
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The token clients must present: configured, else kept in `<state_dir>/api-token`
/// (made on first start, readable by the node's user only).
pub fn token(config: &HttpConfig, state_dir: &Path) -> Result<String> {
    if let Some(t) = &config.token {
        return Ok(t.clone());
    }
    // 32 bytes: 64 hex digits, well over MIN_TOKEN_LEN.
    crate::secret::read_or_make(&state_dir.join("api-token"), 32)
}

/// Bind and serve until `shutdown`.
pub async fn serve(
    apiary: Arc<Apiary>,
    config: &HttpConfig,
    ingest: Option<crate::ingest::IngestMonitor>,
) -> Result<Server> {
    let token = token(config, &apiary.config().node.state_dir)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(
            cert,
            key,
            ("http.tls_cert", "http.tls_key"),
        )?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| {
            Error::invalid(format!(
                "cannot listen on {} (http.listen): {e}",
                config.listen
            ))
        })?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        apiary,
        ingest,
        token_digest: Sha256::digest(token.as_bytes()).into(),
        metrics: Metrics::default(),
    });
    let app = router(state, config);
    let (stop, mut stopped) = watch::channel(false);
    let is_tls = tls.is_some();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = stopped.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (app, tls) = (app.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                        // A failed or stalled handshake just drops the connection.
                        if let Ok(Ok(stream)) = handshake.await {
                            serve_connection(stream, app).await
                        }
                    }
                    None => serve_connection(tcp, app).await,
                }
            });
        }
    });
    Ok(Server {
        addr,
        tls: is_tls,
        stop,
        task,
    })
}

async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let service = hyper_util::service::TowerToHyperService::new(app);
    // A client that goes away mid-response is routine, not worth a log line.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn router(state: Arc<AppState>, config: &HttpConfig) -> Router {
    let max_sql = config.max_sql.0 as usize;
    let max_udf = config.max_udf.0 as usize;
    let timed = Router::new()
        .route("/", get(page::page))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/status", get(status))
        .route("/v1/swarm", get(swarm))
        .route("/v1/colony", get(colony))
        .route("/v1/bees", get(bees))
        .route("/v1/frames", get(frames))
        .route("/v1/ingest", get(ingest))
        .route("/v1/udfs", get(udf_list))
        .route(
            "/v1/udfs/:name",
            get(udf_get)
                .delete(udf_remove)
                .put(udf_add)
                .layer(DefaultBodyLimit::max(max_udf)),
        )
        .layer(middleware::from_fn(deadline));
    // SQL is bounded by its chamber's deadline instead: a big result takes its time.
    let sql = Router::new().route("/v1/sql", post(sql).layer(DefaultBodyLimit::max(max_sql)));
    let protected = timed
        .merge(sql)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async { ApiError(Error::not_found("no such route")) })
        .with_state(state)
}

async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(Error::new(
            ErrorKind::Timeout,
            format!(
                "the request took longer than {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ))
        .into_response(),
    }
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    let ok = presented.is_some_and(|t| {
        let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        bool::from(digest.ct_eq(&st.token_digest))
    });
    if ok {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    // Read (a bounded amount of) what the client is sending before refusing it, so it gets
    // the 401 rather than a connection reset mid-upload.
    let drain = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT);
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, drain).await;
    let mut resp = ApiError(Error::new(
        ErrorKind::InvalidInput,
        "a valid token is needed: send Authorization: Bearer <token> (the node's \
         http.token, or <state_dir>/api-token)",
    ))
    .into_response();
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    // Browsers asking for the page get a password prompt (any user name, the token).
    let challenge = if path == "/" {
        "Basic realm=\"apiary\""
    } else {
        "Bearer realm=\"apiary\""
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// The token in an `Authorization` value: `Bearer <t>`, or `Basic` with `<t>` as password.
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, pass)| pass.to_string());
    }
    None
}

/// An error as an HTTP response: a status for its kind and `{"error", "message"}`.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn status_code(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidInput | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
        ErrorKind::Busy { .. } | ErrorKind::ResourcesExhausted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Storage => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::json!({"error": e.kind.name(), "message": e.message});
        let mut resp = (status_code(e.kind), axum::Json(body)).into_response();
        if let Some(ms) = e.retry_after_ms() {
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn json(value: &impl Serialize) -> ApiResult<Response> {
    Ok(axum::Json(serde_json::to_value(value).map_err(Error::from)?).into_response())
}

async fn status(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.status())
}

async fn swarm(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.swarm_status().await?)
}

async fn colony(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.colony_status())
}

async fn bees(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.bee_status())
}

async fn frames(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.frame_list().await?)
}

async fn ingest(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let ingest = st.ingest.as_ref().ok_or_else(crate::ingest::not_running)?;
    json(&ingest.status())
}

async fn udf_list(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    json(&st.apiary.udfs().list().await?)
}

async fn udf_get(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    match st.apiary.udfs().get(&name).await? {
        Some(m) => json(&m),
        None => Err(Error::not_found(format!("function not found: {name}")).into()),
    }
}

#[derive(serde::Deserialize)]
struct AddParams {
    #[serde(default)]
    replace: bool,
}

async fn udf_add(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Query(params): Query<AddParams>,
    body: Bytes,
) -> ApiResult<Response> {
    json(&st.apiary.udfs().add(&name, body, params.replace).await?)
}

async fn udf_remove(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    st.apiary.udfs().remove(&name).await?;
    json(&serde_json::json!({ "removed": name }))
}

/// `POST /v1/sql`: run the body's statements in a session scoped by the hive/box headers;
/// the response is the last statement's result, a query's streamed batch by batch.
async fn sql(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let response = run_sql(&st, &headers, body, started).await;
    match response {
        Ok(r) => r,
        Err(e) => {
            st.metrics.query_done(false, started.elapsed());
            e.into_response()
        }
    }
}

async fn run_sql(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Bytes,
    started: Instant,
) -> ApiResult<Response> {
    let header_str = |name: &str| -> ApiResult<Option<String>> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| Error::invalid(format!("header {name} is not text")).into()),
        }
    };
    let accept = header_str(header::ACCEPT.as_str())?;
    let format = Format::from_accept(accept.as_deref()).ok_or_else(|| {
        Error::unsupported(format!(
            "cannot answer in {:?}: accept {}, text/csv or application/json",
            accept.as_deref().unwrap_or(""),
            Format::ARROW_MIME
        ))
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::invalid("the SQL in the request body is not UTF-8"))?;
    // Parsed once, whole: a syntax error anywhere runs none of it.
    let mut statements = statement::parse_script(text)?;
    let Some(last) = statements.pop() else {
        return Err(Error::invalid("no SQL statement in the request body").into());
    };
    let is_query = matches!(last, Statement::Query(_));
    let mut session = st.apiary.session();
    session
        .use_scope(header_str(HIVE_HEADER)?, header_str(BOX_HEADER)?)
        .await?;
    for s in statements {
        session.execute(s).await?;
    }
    let mut head = HeaderMap::new();
    head.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    if !is_query {
        // DDL, USE, SHOW, DESCRIBE, INSERT: small results, run whole.
        let r = session.execute(last).await?;
        scope_headers(&mut head, &session);
        let bytes = crate::output::encode(format, &r.schema, &r.batches)?;
        st.metrics.query_done(true, started.elapsed());
        return Ok((head, bytes).into_response());
    }
    scope_headers(&mut head, &session);
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    let run = tokio::spawn(async move { session.run_streamed(last, tx).await });
    // Planning errors (unknown frame, bad SQL) come before the schema: answer them with a
    // status. Errors later on cut the stream short, which clients see as a broken body.
    let schema = match rx.recv().await {
        Some(Output::Schema(s)) => s,
        Some(Output::Batch(_)) => return Err(Error::internal("a batch before the schema").into()),
        None => {
            return Err(match run.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::internal("the query ended without a result"),
                Err(e) => Error::internal(format!("the query task failed: {e}")),
            }
            .into());
        }
    };
    let (encoder, first) = Encoder::begin(format, &schema)?;
    let body = Streamed {
        first: Some(first),
        encoder: Some(encoder),
        rx,
        run: Some(run),
        st: st.clone(),
        started,
    };
    let stream = futures::stream::unfold(body, |mut body| async move {
        let item = body.next().await?;
        Some((item, body))
    });
    Ok((head, Body::from_stream(stream)).into_response())
}

fn scope_headers(head: &mut HeaderMap, session: &crate::sql::Session) {
    for (name, value) in [
        (HIVE_HEADER, session.hive()),
        (BOX_HEADER, session.box_name()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            head.insert(name, v);
        }
    }
}

/// A query's result on its way out: encoded batch by batch as the client reads.
struct Streamed {
    first: Option<Vec<u8>>,
    encoder: Option<Encoder>,
    rx: mpsc::Receiver<Output>,
    run: Option<tokio::task::JoinHandle<Result<()>>>,
    st: Arc<AppState>,
    started: Instant,
}

impl Streamed {
    /// The next piece of the body; `None` after the last (or after an error).
    async fn next(&mut self) -> Option<Result<Bytes>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(Bytes::from(first)));
        }
        let encoder = self.encoder.as_mut()?;
        let piece = match self.rx.recv().await {
            Some(Output::Batch(b)) => encoder.batch(&b),
            Some(Output::Schema(_)) => Err(Error::internal("a second schema in one result")),
            None => {
                let encoder = self.encoder.take()?;
                let ended = match self.run.take()?.await {
                    Ok(r) => r,
                    Err(e) => Err(Error::internal(format!("the query task failed: {e}"))),
                };
                let last = ended.and_then(|()| encoder.finish());
                self.st
                    .metrics
                    .query_done(last.is_ok(), self.started.elapsed());
                return Some(last.map(Bytes::from));
            }
        };
        if piece.is_err() {
            self.encoder = None;
            self.st.metrics.query_done(false, self.started.elapsed());
        }
        Some(piece.map(Bytes::from))
    }
}

//! A client of a node's HTTP API, for `apiary --remote http://host:8080 ...`: SQL results
//! come back as Arrow IPC and print exactly as local ones do.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};

use crate::error::{Error, ErrorKind, Result};
use crate::http::{BOX_HEADER, HIVE_HEADER};
use crate::output::Format;
use crate::sql::QueryResult;

pub struct Remote {
    base: String,
    client: reqwest::Client,
}

/// The hive and box a remote session is in (what `USE` set), sent with each statement.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub hive: Option<String>,
    pub box_name: Option<String>,
}

impl Remote {
    pub fn new(url: &str, token: Option<&str>) -> Result<Remote> {
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "--remote {url:?}: give the node's address like http://host:8080"
                ))
            })?;
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Error::invalid(
                "--remote needs the node's token: --token or APIARY_TOKEN (on the node: its \
                 http.token, or the file <state_dir>/api-token)",
            )
        })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::invalid("the token has characters a header cannot carry"))?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::internal(format!("cannot make an HTTP client: {e}")))?;
        Ok(Remote {
            base: parsed.as_str().trim_end_matches('/').to_string(),
            client,
        })
    }

    /// Run one statement in `scope`; `scope` follows a `USE`.
    pub async fn sql(&self, statement: &str, scope: &mut Scope) -> Result<QueryResult> {
        let mut req = self
            .client
            .post(format!("{}/v1/sql", self.base))
            .header(ACCEPT, Format::ARROW_MIME)
            .body(statement.to_string());
        if let Some(h) = &scope.hive {
            req = req.header(HIVE_HEADER, h);
        }
        if let Some(b) = &scope.box_name {
            req = req.header(BOX_HEADER, b);
        }
        let resp = self.send(req).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        scope.hive = header(HIVE_HEADER);
        scope.box_name = header(BOX_HEADER);
        let body = self.body(resp).await?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .map_err(|e| Error::storage(format!("a broken result from the node: {e}")))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::storage(format!("a broken result from the node: {e}")))?;
        Ok(QueryResult {
            schema,
            batches,
            spilled_bytes: 0,
        })
    }

    /// `GET` a JSON route such as `/v1/status`.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let resp = self
            .send(self.client.get(format!("{}{path}", self.base)))
            .await?;
        Ok(serde_json::from_slice(&self.body(resp).await?)?)
    }

    pub async fn udf_add(
        &self,
        name: &str,
        wasm: Vec<u8>,
        replace: bool,
    ) -> Result<serde_json::Value> {
        let req = self
            .client
            .put(format!("{}/v1/udfs/{name}", self.base))
            .query(&[("replace", replace)])
            .body(wasm);
        let resp = self.send(req).await?;
        Ok(serde_json::from_slice(&self.body(resp).await?)?)
    }

    pub async fn udf_remove(&self, name: &str) -> Result<()> {
        let req = self.client.delete(format!("{}/v1/udfs/{name}", self.base));
        self.send(req).await.map(|_| ())
    }

    /// Send, and turn an error answer into our error (its kind and message).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| Error::storage(format!("cannot reach the node at {}: {e}", self.base)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(Error::invalid(format!(
                "the node at {} refused the token (401): check --token / APIARY_TOKEN",
                self.base
            )));
        }
        // Seconds, as the HTTP API sends it with a busy answer.
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(1000, |s| s * 1000);
        let body = resp.bytes().await.unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Answer {
            error: String,
            message: String,
        }
        Err(match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => Error::new(
                ErrorKind::from_name(&a.error, retry_after_ms).unwrap_or(ErrorKind::Internal),
                a.message,
            ),
            Err(_) => Error::storage(format!(
                "the node at {} answered {status}: {}",
                self.base,
                String::from_utf8_lossy(&body).trim()
            )),
        })
    }

    async fn body(&self, resp: reqwest::Response) -> Result<Bytes> {
        resp.bytes()
            .await
            .map_err(|e| Error::storage(format!("the answer from {} broke off: {e}", self.base)))
    }
}

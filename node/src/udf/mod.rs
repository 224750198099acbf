//! User functions as WebAssembly components (`udf-sdk/wit`), stored once in the meadow and
//! usable from SQL on every node that shares it.
//!
//! `_apiary/udfs/<name>.json` is the manifest (signature, sha256), `_apiary/udfs/<sha256>.wasm`
//! the component. Nodes read the manifest when a statement names a function DataFusion does
//! not know, so a function added (or dropped) on one node is seen by the others at their next
//! statement.

mod columns;
mod host;
mod scalar;

use crate::layout::{Dir, Key, sha256_hex};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::logical_expr::ScalarUDF;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::meadow::{Meadow, format_version};
use columns::{parse_type, type_name};
use host::Runtime;

/// A UDF component bigger than this is refused on upload.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Memory and time a component gets while it describes itself on upload.
const VALIDATION_MEMORY: usize = 256 << 20;
const VALIDATION_TIME: Duration = Duration::from_secs(5);
const MAX_ARGS: usize = 16;

/// The stored description of one UDF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdfManifest {
    pub format_version: u32,
    pub name: String,
    /// Argument types, e.g. `["float64"]`.
    pub args: Vec<String>,
    pub returns: String,
    pub deterministic: bool,
    pub sha256: String,
    pub size: u64,
    /// RFC 3339
    pub created: String,
}

/// The node's UDFs: the meadow registry plus the wasmtime runtime.
#[derive(Clone)]
pub struct Udfs {
    meadow: Meadow,
    runtime: Arc<Runtime>,
    timeout: Duration,
}

/// SQL names: what DataFusion would make of an unquoted identifier.
pub fn check_name(name: &str) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 64
        && lower.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(lower)
    } else {
        Err(Error::invalid(format!(
            "bad function name {name:?}: use letters, digits and _ (not first), at most 64"
        )))
    }
}

fn manifest_path(name: &str) -> String {
    Key::UdfManifest(name.into()).to_string()
}

fn wasm_path(sha256: &str) -> String {
    Key::UdfModule(sha256.into()).to_string()
}

impl Udfs {
    /// `state_dir/udf-cache` keeps compiled components between restarts.
    pub fn new(meadow: Meadow, state_dir: &Path, timeout: Duration) -> Result<Udfs> {
        Ok(Udfs {
            meadow,
            runtime: Arc::new(Runtime::new(&state_dir.join("udf-cache"))?),
            timeout,
        })
    }

    /// Validate a component (compile, link, ask its signature) and store it under `name`.
    /// An identical re-add is a no-op; a different component under a taken name needs
    /// `replace`.
    pub async fn add(&self, name: &str, wasm: Bytes, replace: bool) -> Result<UdfManifest> {
        let name = check_name(name)?;
        if builtin_function(&name) {
            return Err(Error::already_exists(format!(
                "{name} is a built-in SQL function; pick another name"
            )));
        }
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(Error::invalid(format!(
                "UDF component of {} MiB is over the {} MiB limit",
                wasm.len() >> 20,
                MAX_COMPONENT_BYTES >> 20
            )));
        }
        let sha256 = sha256_hex(&wasm);
        let runtime = self.runtime.clone();
        let (sha, bytes) = (sha256.clone(), wasm.clone());
        let signature = tokio::task::spawn_blocking(move || describe(&runtime, &sha, &bytes))
            .await
            .map_err(|e| Error::internal(format!("UDF validation task: {e}")))?
            .map_err(|e| e.context(format!("UDF {name}")))?;
        if signature.args.len() > MAX_ARGS {
            return Err(Error::invalid(format!(
                "UDF {name} declares {} arguments; at most {MAX_ARGS}",
                signature.args.len()
            )));
        }
        let manifest = UdfManifest {
            format_version: format_version(),
            name: name.clone(),
            args: signature
                .args
                .iter()
                .map(|t| type_name(*t).into())
                .collect(),
            returns: type_name(signature.returns).into(),
            deterministic: signature.deterministic,
            sha256: sha256.clone(),
            size: wasm.len() as u64,
            created: crate::clock::utc().to_rfc3339(),
        };
        self.meadow.put_if_absent(&wasm_path(&sha256), wasm).await?;
        let body = crate::meadow::encode_json(&manifest)?;
        if replace {
            self.meadow.put(&manifest_path(&name), body).await?;
            return Ok(manifest);
        }
        if !self
            .meadow
            .put_if_absent(&manifest_path(&name), body)
            .await?
        {
            let existing = self.get(&name).await?;
            match existing {
                Some(m) if m.sha256 == sha256 => return Ok(m),
                _ => {
                    return Err(Error::already_exists(format!(
                        "function {name} already exists with another component; drop it first or use CREATE OR REPLACE FUNCTION (apiary udf add --replace)"
                    )));
                }
            }
        }
        Ok(manifest)
    }

    pub async fn get(&self, name: &str) -> Result<Option<UdfManifest>> {
        let Ok(name) = check_name(name) else {
            return Ok(None);
        };
        Ok(self
            .meadow
            .get_json::<UdfManifest>(&manifest_path(&name))
            .await?
            .map(|v| v.value))
    }

    pub async fn list(&self) -> Result<Vec<UdfManifest>> {
        let mut out = Vec::new();
        for file in self.meadow.list_names(&Dir::Udfs.to_string()).await? {
            if let Some(name) = file.strip_suffix(".json")
                && let Some(m) = self.get(name).await?
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Remove a UDF's manifest (the component stays for other names using the same bytes).
    pub async fn remove(&self, name: &str) -> Result<()> {
        let name = check_name(name)?;
        if self.get(&name).await?.is_none() {
            return Err(Error::not_found(format!("function not found: {name}")));
        }
        self.meadow.delete(&manifest_path(&name)).await
    }

    /// Whether the component is compiled in memory or on this node's disk (for tests and
    /// benchmarks of the cold path).
    pub fn is_compiled(&self, sha256: &str) -> bool {
        self.runtime.cached(sha256).is_some() || self.runtime.on_disk(sha256)
    }

    /// The UDF as a DataFusion function for one task: its linear memory comes out of
    /// `memory` (the chamber's pool), no call runs past `deadline`.
    pub async fn scalar(
        &self,
        manifest: &UdfManifest,
        memory: Arc<dyn MemoryPool>,
        deadline: Instant,
    ) -> Result<ScalarUDF> {
        let sig = signature_of(manifest)?;
        let pre = match self.runtime.cached(&manifest.sha256) {
            Some(pre) => pre,
            None => {
                let wasm = if self.runtime.on_disk(&manifest.sha256) {
                    None
                } else {
                    let Some(w) = self.meadow.get(&wasm_path(&manifest.sha256)).await? else {
                        return Err(Error::not_found(format!(
                            "UDF {}: its component {} is missing from the meadow",
                            manifest.name, manifest.sha256
                        )));
                    };
                    if sha256_hex(&w.value) != manifest.sha256 {
                        return Err(Error::storage(format!(
                            "UDF {}: the stored component does not match its sha256",
                            manifest.name
                        )));
                    }
                    Some(w.value)
                };
                let runtime = self.runtime.clone();
                let sha = manifest.sha256.clone();
                tokio::task::spawn_blocking(move || runtime.prepare(&sha, wasm.as_deref()))
                    .await
                    .map_err(|e| Error::internal(format!("UDF compile task: {e}")))??
            }
        };
        Ok(ScalarUDF::new_from_impl(scalar::WasmUdf {
            name: manifest.name.clone(),
            sha256: manifest.sha256.clone(),
            args: sig.args,
            returns: sig.returns,
            signature: scalar::volatility(manifest.deterministic),
            runtime: self.runtime.clone(),
            pre,
            memory,
            timeout: self.timeout,
            deadline,
            idle: Mutex::new(Vec::new()),
        }))
    }
}

/// The component's own description, from a throwaway instance with fixed limits.
fn describe(runtime: &Runtime, sha256: &str, wasm: &[u8]) -> Result<host::Signature> {
    let pre = runtime.prepare(sha256, Some(wasm))?;
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(VALIDATION_MEMORY));
    let mut store = runtime.store("validation", &pool);
    Runtime::arm(&mut store, Instant::now() + VALIDATION_TIME);
    let bindings = pre.instantiate(&mut store).map_err(|e| {
        Error::invalid(format!(
            "the component fails to start: {}",
            host::root_message(&e)
        ))
    })?;
    let signature = bindings
        .call_describe(&mut store)
        .map_err(|e| Error::invalid(format!("describe() failed: {}", host::root_message(&e))))?;
    check_name(&signature.name).map_err(|e| e.context("the component's own name"))?;
    Ok(signature)
}

struct Sig {
    args: Vec<host::WitType>,
    returns: host::WitType,
}

fn signature_of(m: &UdfManifest) -> Result<Sig> {
    let parse = |t: &str| {
        parse_type(t).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("UDF {}: unknown type {t} in its manifest", m.name),
            )
        })
    };
    Ok(Sig {
        args: m.args.iter().map(|t| parse(t)).collect::<Result<_>>()?,
        returns: parse(&m.returns)?,
    })
}

/// Names DataFusion already resolves; a UDF under one of them would never be called.
pub fn builtin_function(name: &str) -> bool {
    use std::sync::OnceLock;
    static NAMES: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let state = datafusion::execution::SessionStateBuilder::new()
                .with_default_features()
                .build();
            state
                .scalar_functions()
                .keys()
                .chain(state.aggregate_functions().keys())
                .chain(state.window_functions().keys())
                .cloned()
                .collect()
        })
        .contains(name)
}

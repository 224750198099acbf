//! A WASM component as a DataFusion scalar function: one guest call per record batch,
//! instances reused across the batches of one query (one per concurrent partition).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use wasmtime::Store;

use super::columns::{arrow_type, from_column, to_column, type_name};
use super::host::{GuestState, Runtime, Scalar, ScalarPre, WitType};
use crate::error::Error;

/// One UDF bound to one query's chamber (its memory pool and deadline).
pub struct WasmUdf {
    pub(super) name: String,
    pub(super) sha256: String,
    pub(super) args: Vec<WitType>,
    pub(super) returns: WitType,
    pub(super) signature: Signature,
    pub(super) runtime: Arc<Runtime>,
    pub(super) pre: ScalarPre<GuestState>,
    pub(super) memory: Arc<dyn MemoryPool>,
    pub(super) timeout: Duration,
    /// The chamber's deadline: no call runs past it.
    pub(super) deadline: Instant,
    pub(super) idle: Mutex<Vec<Instance>>,
}

pub(super) struct Instance {
    store: Store<GuestState>,
    bindings: Scalar,
}

impl fmt::Debug for WasmUdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmUdf")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl PartialEq for WasmUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.sha256 == other.sha256
    }
}

impl Eq for WasmUdf {}

impl Hash for WasmUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.sha256.hash(state);
    }
}

pub(super) fn volatility(deterministic: bool) -> Signature {
    Signature::user_defined(if deterministic {
        Volatility::Immutable
    } else {
        Volatility::Volatile
    })
}

impl WasmUdf {
    fn describe_args(&self) -> String {
        self.args
            .iter()
            .map(|t| type_name(*t))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn fail(&self, kind: crate::error::ErrorKind, msg: String) -> DataFusionError {
        Error::new(kind, format!("UDF {}: {msg}", self.name)).into()
    }

    fn instance(&self) -> DfResult<Instance> {
        if let Some(i) = self.idle.lock().expect("udf instances").pop() {
            return Ok(i);
        }
        let mut store = self.runtime.store(&self.name, &self.memory);
        Runtime::arm(&mut store, self.call_deadline());
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Instance { store, bindings }),
            Err(e) => Err(self.trap_error(&store, &e)),
        }
    }

    fn call_deadline(&self) -> Instant {
        (Instant::now() + self.timeout).min(self.deadline)
    }

    /// Name the limit a failed call hit.
    fn trap_error(&self, store: &Store<GuestState>, e: &wasmtime::Error) -> DataFusionError {
        use crate::error::ErrorKind;
        let data = store.data();
        if let Some(wanted) = data.limits.denied {
            let budget = self.memory.memory_limit();
            let budget = match budget {
                datafusion::execution::memory_pool::MemoryLimit::Finite(b) => {
                    format!("{} MiB", b >> 20)
                }
                _ => "unlimited".into(),
            };
            return self.fail(
                ErrorKind::ResourcesExhausted,
                format!(
                    "exceeded its memory limit: asked to grow linear memory to {} MiB, beyond what the bee's budget ({budget}) has left",
                    wanted >> 20
                ),
            );
        }
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            let limit = if Instant::now() >= self.deadline {
                "the query's deadline (bees.task_timeout)".to_string()
            } else {
                format!(
                    "its time limit of {} per batch (udf.timeout)",
                    crate::config::Period(self.timeout)
                )
            };
            return self.fail(ErrorKind::Timeout, format!("stopped: it ran past {limit}"));
        }
        // The trap kind says what happened; the wasm backtrace would only be noise here.
        let what = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => super::host::root_message(e),
        };
        let stderr = data.stderr.contents();
        let printed: Vec<&str> = std::str::from_utf8(&stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with"))
            .collect();
        let mut msg = format!("failed: {what}");
        if !printed.is_empty() {
            msg.push_str(&format!("; it printed: {}", printed.join(" / ")));
        }
        self.fail(ErrorKind::InvalidInput, msg)
    }

    fn call(&self, columns: &[super::host::Column], rows: usize) -> DfResult<super::host::Column> {
        let mut inst = self.instance()?;
        Runtime::arm(&mut inst.store, self.call_deadline());
        let outcome = inst
            .bindings
            .call_invoke(&mut inst.store, columns, rows as u32);
        match outcome {
            Ok(Ok(col)) => {
                self.idle.lock().expect("udf instances").push(inst);
                Ok(col)
            }
            Ok(Err(msg)) => {
                self.idle.lock().expect("udf instances").push(inst);
                Err(self.fail(crate::error::ErrorKind::InvalidInput, msg))
            }
            // A trapped instance is poisoned: drop it (its memory goes back to the pool).
            Err(e) => Err(self.trap_error(&inst.store, &e)),
        }
    }
}

/// wasmtime's WASI runs its host calls with `block_on`, which must not happen on an async
/// worker thread: step off it for the call.
fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().expect("udf call thread")),
        Err(_) => f(),
    }
}

impl ScalarUDFImpl for WasmUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arrow_type(self.returns))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.len() != self.args.len() {
            return Err(DataFusionError::Plan(format!(
                "{} takes {} argument(s) ({}), got {}",
                self.name,
                self.args.len(),
                self.describe_args(),
                arg_types.len()
            )));
        }
        arg_types
            .iter()
            .zip(&self.args)
            .enumerate()
            .map(|(i, (from, to))| {
                let to = arrow_type(*to);
                if from == &to || from == &DataType::Null || can_cast_types(from, &to) {
                    Ok(to)
                } else {
                    Err(DataFusionError::Plan(format!(
                        "{} argument {}: cannot use {from} as {}",
                        self.name,
                        i + 1,
                        type_name(self.args[i])
                    )))
                }
            })
            .collect()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let mut columns = Vec::with_capacity(args.args.len());
        for (value, t) in args.args.iter().zip(&self.args) {
            let mut array = value.to_array(rows)?;
            let want = arrow_type(*t);
            if array.data_type() != &want {
                array = cast(&array, &want)?;
            }
            columns.push(to_column(&array, *t));
        }
        if rows == 0 {
            return Ok(ColumnarValue::Array(arrow::array::new_empty_array(
                &arrow_type(self.returns),
            )));
        }
        let result = off_async(|| self.call(&columns, rows))?;
        let array = from_column(result, self.returns, rows)
            .map_err(|msg| self.fail(crate::error::ErrorKind::InvalidInput, msg))?;
        Ok(ColumnarValue::Array(array))
    }
}

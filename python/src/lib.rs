//! The `apiary` Python module (`apiary._apiary`): the first SDK's surface over the `apiary`
//! crate, plus zero-copy `pyarrow` tables through the Arrow C stream interface. Every call
//! that does I/O or runs a query releases the GIL, so threads share one instance and their
//! queries run at once on the node's bees.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyDict};

use apiary::config::Config;
use apiary::frames::{Column, FrameDef, WriteMode};
use apiary::names::FrameRef;
use apiary::node::{Node, Services};
use apiary::{ErrorKind, output};

create_exception!(_apiary, ApiaryError, PyRuntimeError, "An Apiary error.");
create_exception!(
    _apiary,
    NotFound,
    ApiaryError,
    "A hive, box, frame or function does not exist."
);
create_exception!(
    _apiary,
    AlreadyExists,
    ApiaryError,
    "It exists already (with another shape)."
);
create_exception!(_apiary, Conflict, ApiaryError, "A concurrent change won.");
create_exception!(_apiary, Unsupported, ApiaryError, "Not supported (yet).");
create_exception!(
    _apiary,
    InvalidInput,
    ApiaryError,
    "Bad input: SQL, names, types, data."
);
create_exception!(
    _apiary,
    Busy,
    ApiaryError,
    "Every bee is busy and the queue is full."
);
create_exception!(
    _apiary,
    Timeout,
    ApiaryError,
    "A task ran past its deadline."
);

const STREAM_CAPSULE: &CStr = c"arrow_array_stream";

fn py_err(e: apiary::Error) -> PyErr {
    let msg = e.to_string();
    match e.kind {
        ErrorKind::NotFound => NotFound::new_err(msg),
        ErrorKind::AlreadyExists => AlreadyExists::new_err(msg),
        ErrorKind::Conflict => Conflict::new_err(msg),
        ErrorKind::Unsupported => Unsupported::new_err(msg),
        ErrorKind::InvalidInput => InvalidInput::new_err(msg),
        ErrorKind::Busy { .. } => Busy::new_err(msg),
        ErrorKind::Timeout => Timeout::new_err(msg),
        ErrorKind::ResourcesExhausted | ErrorKind::Storage | ErrorKind::Internal => {
            ApiaryError::new_err(msg)
        }
    }
}

fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidInput::new_err(msg.into())
}

/// A started node and the runtime it runs on.
struct Started {
    runtime: tokio::runtime::Runtime,
    node: Node,
}

impl Started {
    /// Run `work` on the node's runtime with the GIL released.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        work: impl AsyncFnOnce(&apiary::Apiary) -> apiary::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.runtime.block_on(work(self.node.apiary())))
            .map_err(py_err)
    }
}

#[pyclass(name = "Apiary", module = "apiary")]
struct PyApiary {
    name: String,
    storage: Option<String>,
    options: BTreeMap<String, String>,
    node: Mutex<Option<Arc<Started>>>,
}

#[pymethods]
impl PyApiary {
    /// `Apiary(name, storage=None, **options)`: `storage` is a directory (or `file://`),
    /// `s3://bucket/prefix` or `memory://`; default a directory for `name` under the user's
    /// data dir. `options` are store options (S3: `endpoint`, `region`, ...).
    #[new]
    #[pyo3(signature = (name, storage=None, **options))]
    fn new(
        name: &str,
        storage: Option<String>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        apiary::names::validate_name("node name", name).map_err(py_err)?;
        let mut opts = BTreeMap::new();
        if let Some(d) = options {
            for (k, v) in d.iter() {
                opts.insert(k.extract::<String>()?, v.str()?.to_string());
            }
        }
        Ok(PyApiary {
            name: name.to_string(),
            storage,
            options: opts,
            node: Mutex::new(None),
        })
    }

    /// Open the meadow and start the bees. Starting a started instance does nothing.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut node = self.node.lock().expect("node lock");
        if node.is_some() {
            return Ok(());
        }
        let config = self.config()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("apiary")
            .build()
            .map_err(|e| ApiaryError::new_err(format!("cannot start a runtime: {e}")))?;
        let started = py
            .detach(|| {
                runtime.block_on(async {
                    let services = Services::library(&config);
                    Node::start(apiary::Apiary::open(config).await?, services).await
                })
            })
            .map_err(py_err)?;
        *node = Some(Arc::new(Started {
            runtime,
            node: started,
        }));
        Ok(())
    }

    /// Stop: wait for running work, then let go of the meadow. Safe to call twice.
    fn shutdown(&self, py: Python<'_>) {
        let node = self.node.lock().expect("node lock").take();
        if let Some(node) = node {
            // Other threads may still hold it for a running call: they finish first.
            py.detach(move || {
                node.runtime.block_on(node.node.shutdown());
                // The last holder lets the runtime go without waiting on blocking I/O that
                // the shutdown deadline cut short.
                if let Ok(node) = Arc::try_unwrap(node) {
                    node.runtime
                        .shutdown_timeout(std::time::Duration::from_secs(1));
                }
            });
        }
    }

    fn __enter__(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        slf.start(py)?;
        Ok(slf.into())
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.shutdown(py);
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.node.lock().expect("node lock").is_some() {
            "started"
        } else {
            "not started"
        };
        format!("Apiary({:?}, {state})", self.name)
    }

    // Namespaces

    #[pyo3(name = "create_hive")]
    fn create_hive(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.node()?
            .run(py, async move |ap| {
                ap.frames().registry().create_hive(&name).await
            })
            .map(|_| ())
    }

    fn create_database(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.create_hive(py, name)
    }

    fn create_box(&self, py: Python<'_>, hive: String, name: String) -> PyResult<()> {
        self.node()?
            .run(py, async move |ap| {
                ap.frames().registry().create_box(&hive, &name).await
            })
            .map(|_| ())
    }

    fn create_schema(&self, py: Python<'_>, hive: String, name: String) -> PyResult<()> {
        self.create_box(py, hive, name)
    }

    #[pyo3(signature = (hive, r#box, name, schema, partition_by=None))]
    fn create_frame(
        &self,
        py: Python<'_>,
        hive: String,
        r#box: String,
        name: String,
        schema: &Bound<'_, PyDict>,
        partition_by: Option<Vec<String>>,
    ) -> PyResult<()> {
        let mut columns = Vec::with_capacity(schema.len());
        for (k, v) in schema.iter() {
            let name: String = k
                .extract()
                .map_err(|_| invalid("schema keys must be column names (str)"))?;
            let type_name: String = v.extract().map_err(|_| {
                invalid(format!(
                    "column {name}: the type must be a string like 'int64'"
                ))
            })?;
            columns.push(Column::new(&name, &type_name).map_err(py_err)?);
        }
        let frame = FrameRef::new(&hive, &r#box, &name).map_err(py_err)?;
        let def =
            FrameDef::new(&frame, columns, partition_by.unwrap_or_default()).map_err(py_err)?;
        self.node()?
            .run(py, async move |ap| ap.frames().create_frame(&def).await)
            .map(|_| ())
    }

    #[pyo3(signature = (hive, r#box, name, schema, partition_by=None))]
    fn create_table(
        &self,
        py: Python<'_>,
        hive: String,
        r#box: String,
        name: String,
        schema: &Bound<'_, PyDict>,
        partition_by: Option<Vec<String>>,
    ) -> PyResult<()> {
        self.create_frame(py, hive, r#box, name, schema, partition_by)
    }

    fn list_hives(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.node()?
            .run(py, async |ap| ap.frames().registry().list_hives().await)
    }

    fn list_databases(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.list_hives(py)
    }

    fn list_boxes(&self, py: Python<'_>, hive: String) -> PyResult<Vec<String>> {
        self.node()?.run(py, async move |ap| {
            ap.frames().registry().list_boxes(&hive).await
        })
    }

    fn list_schemas(&self, py: Python<'_>, hive: String) -> PyResult<Vec<String>> {
        self.list_boxes(py, hive)
    }

    fn list_frames(&self, py: Python<'_>, hive: String, r#box: String) -> PyResult<Vec<String>> {
        self.node()?.run(py, async move |ap| {
            ap.frames().registry().list_frames(&hive, &r#box).await
        })
    }

    fn list_tables(&self, py: Python<'_>, hive: String, r#box: String) -> PyResult<Vec<String>> {
        self.list_frames(py, hive, r#box)
    }

    fn get_frame<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        name: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        let frame = FrameRef::new(&hive, &r#box, &name).map_err(py_err)?;
        let info = self
            .node()?
            .run(py, async move |ap| ap.frames().info(&frame).await)?;
        let d = PyDict::new(py);
        let schema = PyDict::new(py);
        for c in &info.def.columns {
            schema.set_item(&c.name, &c.spelt)?;
        }
        d.set_item("name", &info.def.frame.frame)?;
        d.set_item("schema", schema)?;
        d.set_item("partition_by", &info.def.partition_by)?;
        d.set_item("created_at", info.def.created_at.to_rfc3339())?;
        d.set_item("cell_count", info.cell_count)?;
        d.set_item("row_count", info.row_count)?;
        d.set_item("total_bytes", info.total_bytes)?;
        d.set_item("version", info.version)?;
        d.set_item("max_partitions", info.def.max_partitions)?;
        Ok(d)
    }

    fn get_table<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        name: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.get_frame(py, hive, r#box, name)
    }

    // Data

    fn write_to_frame<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        frame: String,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.store(py, hive, r#box, frame, data, false)
    }

    fn overwrite_frame<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        frame: String,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.store(py, hive, r#box, frame, data, true)
    }

    /// The frame's rows as Arrow IPC stream bytes; `None` when it has none.
    #[pyo3(signature = (hive, r#box, frame, partition_filter=None))]
    fn read_from_frame<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        frame: String,
        partition_filter: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let sql = read_sql(&hive, &r#box, &frame, partition_filter)?;
        let (schema, batches) = self.run_sql(py, sql)?;
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        ipc_bytes(py, &schema, &batches).map(Some)
    }

    /// The result of the last statement as Arrow IPC stream bytes; `None` when it has no
    /// batches (DDL, USE, INSERT with nothing to report).
    fn sql<'py>(&self, py: Python<'py>, query: String) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let (schema, batches) = self.run_sql(py, query)?;
        if batches.is_empty() {
            return Ok(None);
        }
        ipc_bytes(py, &schema, &batches).map(Some)
    }

    /// The result of the last statement as a `pyarrow.Table` (its buffers are shared with
    /// Apiary through the Arrow C stream interface, not copied).
    fn query<'py>(&self, py: Python<'py>, sql: String) -> PyResult<Bound<'py, PyAny>> {
        let (schema, batches) = self.run_sql(py, sql)?;
        to_pyarrow(py, schema, batches)
    }

    /// A frame's rows as a `pyarrow.Table` (zero-copy, like `query`).
    #[pyo3(signature = (hive, r#box, frame, partition_filter=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        frame: String,
        partition_filter: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sql = read_sql(&hive, &r#box, &frame, partition_filter)?;
        let (schema, batches) = self.run_sql(py, sql)?;
        to_pyarrow(py, schema, batches)
    }

    // Status

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.node()?.node.apiary().status())
    }

    fn bee_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.node()?.node.apiary().bee_status())
    }

    fn swarm_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let status = py
            .detach(|| node.runtime.block_on(node.node.apiary().swarm_status()))
            .map_err(py_err)?;
        to_python(py, &status)
    }

    fn colony_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.node()?.node.apiary().colony_status())
    }

    // UDFs

    /// Upload a WebAssembly component (bytes, or a path to the `.wasm` file) as SQL
    /// function `name`; returns its manifest.
    #[pyo3(signature = (name, wasm, replace=false))]
    fn register_udf<'py>(
        &self,
        py: Python<'py>,
        name: String,
        wasm: &Bound<'py, PyAny>,
        replace: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bytes: Vec<u8> = if let Ok(b) = wasm.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(path) = wasm.extract::<PathBuf>() {
            std::fs::read(&path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?
        } else {
            return Err(invalid("wasm must be bytes or a path to a .wasm file"));
        };
        let m = self.node()?.run(py, async move |ap| {
            ap.udfs().add(&name, bytes.into(), replace).await
        })?;
        to_python(py, &m)
    }

    fn list_udfs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let list = self.node()?.run(py, async |ap| ap.udfs().list().await)?;
        to_python(py, &list)
    }

    fn drop_udf(&self, py: Python<'_>, name: String) -> PyResult<()> {
        self.node()?
            .run(py, async move |ap| ap.udfs().remove(&name).await)
    }
}

impl PyApiary {
    fn node(&self) -> PyResult<Arc<Started>> {
        self.node.lock().expect("node lock").clone().ok_or_else(|| {
            ApiaryError::new_err(format!(
                "node not started: call Apiary({:?}).start() first (or use `with`)",
                self.name
            ))
        })
    }

    fn config(&self) -> PyResult<Config> {
        // The same layering as the command line: file, environment, then our arguments.
        let mut config = Config::load(None).map_err(py_err)?;
        let base = data_dir().join(&self.name);
        if config.node.state_dir == Config::default().node.state_dir {
            config.node.state_dir = base.join("state");
        }
        if let Some(s) = &self.storage {
            config.meadow.uri = Some(s.clone());
        } else if config.meadow.uri.is_none() {
            config.meadow.uri = Some(base.join("meadow").display().to_string());
        }
        config.node.name = Some(self.name.clone());
        config.meadow.options.extend(self.options.clone());
        Ok(config)
    }

    fn run_sql(&self, py: Python<'_>, sql: String) -> PyResult<(SchemaRef, Vec<RecordBatch>)> {
        let mut results = self.node()?.run(py, async move |ap| ap.sql(&sql).await)?;
        let last = results
            .pop()
            .ok_or_else(|| invalid("no SQL statement given"))?;
        Ok((last.schema, last.batches))
    }

    fn store<'py>(
        &self,
        py: Python<'py>,
        hive: String,
        r#box: String,
        frame: String,
        data: &Bound<'py, PyAny>,
        overwrite: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batches = batches_from(data)?;
        let node = self.node()?;
        let frame = FrameRef::new(&hive, &r#box, &frame).map_err(py_err)?;
        let mode = if overwrite {
            WriteMode::Overwrite
        } else {
            WriteMode::Append
        };
        let report = node.run(py, async move |ap| ap.write(&frame, batches, mode).await)?;
        let d = PyDict::new(py);
        d.set_item("version", report.version)?;
        d.set_item("cells_written", report.cells_written)?;
        d.set_item("rows_written", report.rows_written)?;
        d.set_item("bytes_written", report.bytes_written)?;
        d.set_item("duration_ms", report.duration_ms)?;
        d.set_item(
            "temperature",
            node.node.apiary().colony_status().temperature,
        )?;
        Ok(d)
    }
}

/// Where instances keep their data by default: `$XDG_DATA_HOME/apiary` or
/// `~/.local/share/apiary`.
fn data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("apiary")
}

/// `SELECT *` of a frame, with `col = value` for each entry of `partition_filter`.
fn read_sql(
    hive: &str,
    r#box: &str,
    frame: &str,
    partition_filter: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut sql = format!(
        "SELECT * FROM {}.{}.{}",
        ident(hive),
        ident(r#box),
        ident(frame)
    );
    let mut conditions = Vec::new();
    for (k, v) in partition_filter.into_iter().flat_map(|d| d.iter()) {
        let column: String = k
            .extract()
            .map_err(|_| invalid("partition_filter keys must be column names"))?;
        let value = if v.is_none() {
            conditions.push(format!("{} IS NULL", ident(&column)));
            continue;
        } else if let Ok(b) = v.extract::<bool>() {
            b.to_string()
        } else if let Ok(i) = v.extract::<i64>() {
            i.to_string()
        } else if let Ok(f) = v.extract::<f64>() {
            format!("{f:?}")
        } else if let Ok(s) = v.extract::<String>() {
            format!("'{}'", s.replace('\'', "''"))
        } else {
            return Err(invalid(format!(
                "partition_filter[{column:?}]: use a string, number, bool or None"
            )));
        };
        conditions.push(format!("{} = {value}", ident(&column)));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    Ok(sql)
}

fn ipc_bytes<'py>(
    py: Python<'py>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = output::encode(output::Format::Arrow, schema, batches).map_err(py_err)?;
    Ok(PyBytes::new(py, &bytes))
}

/// Batches handed to pyarrow through an `arrow_array_stream` capsule: pyarrow takes the
/// buffers over as they are.
fn to_pyarrow<'py>(
    py: Python<'py>,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> PyResult<Bound<'py, PyAny>> {
    let reader: Box<dyn RecordBatchReader + Send> = Box::new(RecordBatchIterator::new(
        batches.into_iter().map(Ok),
        schema,
    ));
    let stream = FFI_ArrowArrayStream::new(reader);
    let capsule = PyCapsule::new_with_value(py, stream, STREAM_CAPSULE)?;
    let pyarrow = py.import("pyarrow")?;
    pyarrow
        .getattr("RecordBatchReader")?
        .call_method1("_import_from_c_capsule", (capsule,))?
        .call_method0("read_all")
}

/// Rows to write: Arrow IPC stream bytes, or anything with `__arrow_c_stream__` (pyarrow
/// tables, pandas and polars frames) or `__arrow_c_array__` (a record batch).
fn batches_from(data: &Bound<'_, PyAny>) -> PyResult<Vec<RecordBatch>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.as_bytes()), None)
                .map_err(|e| invalid(format!("data is not an Arrow IPC stream: {e}")))?;
        return reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("data is not an Arrow IPC stream: {e}")));
    }
    let source = if data.hasattr("__arrow_c_stream__")? {
        data.clone()
    } else if data.hasattr("__arrow_c_array__")? {
        // A single batch: let pyarrow make it a one-batch table.
        data.py()
            .import("pyarrow")?
            .call_method1("table", (data,))?
    } else {
        return Err(invalid(format!(
            "cannot write a {}: give Arrow IPC bytes, a pyarrow Table or RecordBatch, or an \
             object with __arrow_c_stream__ (pandas, polars)",
            data.get_type().name()?
        )));
    };
    let capsule = source.call_method0("__arrow_c_stream__")?;
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| invalid("__arrow_c_stream__ did not return a capsule"))?;
    let ptr = capsule
        .pointer_checked(Some(STREAM_CAPSULE))
        .map_err(|_| invalid("__arrow_c_stream__ returned a capsule of another kind"))?;
    // SAFETY: the capsule holds an ArrowArrayStream (checked by name); from_raw moves it out
    // and marks the capsule's copy released, as the C stream interface prescribes.
    let reader =
        unsafe { ArrowArrayStreamReader::from_raw(ptr.as_ptr() as *mut FFI_ArrowArrayStream) }
            .map_err(|e| invalid(format!("cannot read the Arrow stream: {e}")))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("cannot read the Arrow stream: {e}")))
}

/// A serialisable value as Python objects (dicts, lists, numbers, strings).
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(value).map_err(|e| ApiaryError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (json,))
}

#[pymodule]
fn _apiary(m: &Bound<'_, PyModule>) -> PyResult<()> {
    apiary::bees::return_freed_memory();
    let py = m.py();
    m.add_class::<PyApiary>()?;
    m.add("ApiaryError", py.get_type::<ApiaryError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("Conflict", py.get_type::<Conflict>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

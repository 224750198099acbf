//! Frames: tables stored as Delta Lake tables at `<root>/<hive>/<box>/<frame>/`. The Delta
//! protocol gives append, atomic overwrite, per-cell statistics, checkpoints and time travel;
//! Apiary decides the cell size (leafcutter sizing), the Parquet properties and how incoming
//! data is cast to the frame's schema.

mod dml;
pub(crate) mod registry;
pub(crate) mod types;

pub use self::dml::{ChangeReport, change_session};

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Transaction;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitConflictError, CommitProperties, TransactionError};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

pub use registry::{Column, FrameDef, Registry};
pub use types::ColumnType;

use crate::error::{Error, Result};
use crate::meadow::Meadow;
use crate::names::FrameRef;

/// Delta writes a checkpoint every this many commits, so a reader replays at most this many
/// JSON log entries.
pub const CHECKPOINT_INTERVAL: u64 = 100;
/// How often a losing committer re-reads and retries before giving up. Appends never conflict,
/// so this only bounds contention (8 writers on one frame need a handful each).
const COMMIT_RETRIES: usize = 200;
/// Frames whose latest snapshot is kept between opens.
const SNAPSHOT_CACHE: usize = 64;
/// The Delta table property holding the id of the frame definition the table belongs to.
const FRAME_ID_KEY: &str = "apiary.frameId";

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Delta version of the commit (unchanged when nothing was written).
    pub version: i64,
    pub cells_written: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
}

/// Figures of a frame at a version.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub def: FrameDef,
    pub version: i64,
    pub cell_count: u64,
    pub row_count: u64,
    pub total_bytes: u64,
}

/// Exactly-once marker for a write: Delta's `txn` action. A writer that crashed after
/// committing finds `version` recorded for `app_id` and skips the replay.
#[derive(Debug, Clone)]
pub struct Txn {
    pub app_id: String,
    pub version: i64,
}

/// Whether a write adds rows or replaces them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Append,
    Overwrite,
}

/// How a write is done: an exactly-once marker, and the DataFusion session (a chamber's) the
/// Delta writer runs in.
#[derive(Default, Clone)]
pub struct WriteCtx {
    pub txn: Option<Txn>,
    pub session: Option<Arc<dyn datafusion::catalog::Session>>,
}

impl std::fmt::Debug for WriteCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCtx")
            .field("txn", &self.txn)
            .finish_non_exhaustive()
    }
}

/// A data file of a frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// Relative to the frame's table, as Delta's log names it (decoded).
    pub path: String,
    pub bytes: u64,
    /// Its key in the cell cache of every node.
    pub key: String,
}

/// A frame opened at a version: its definition and its Delta table.
#[derive(Debug, Clone)]
pub struct Frame {
    pub def: FrameDef,
    pub table: DeltaTable,
}

impl Frame {
    pub fn version(&self) -> i64 {
        self.table.version().map(|v| v as i64).unwrap_or(-1)
    }

    /// Does the definition have columns the Delta table does not have yet?
    fn lacks_columns(&self) -> Result<bool> {
        let snapshot = self.table.snapshot()?;
        let table = snapshot.schema();
        Ok(self
            .def
            .columns
            .iter()
            .any(|c| table.field(&c.name).is_none()))
    }

    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        arrow_schema(&self.def)
    }

    pub fn info(&self) -> Result<FrameInfo> {
        let (mut cells, mut rows, mut bytes) = (0u64, 0u64, 0u64);
        for f in self.table.snapshot()?.log_data().iter() {
            cells += 1;
            rows += f.num_records().unwrap_or(0) as u64;
            bytes += f.size().max(0) as u64;
        }
        Ok(FrameInfo {
            def: self.def.clone(),
            version: self.version(),
            cell_count: cells,
            row_count: rows,
            total_bytes: bytes,
        })
    }
}

/// Did creating a table fail because another writer created or replaced it meanwhile?
fn lost_race(e: &DeltaTableError) -> bool {
    match e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::VersionAlreadyExists(_)
                | TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
        ),
        _ => false,
    }
}

fn metadata_changed(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::MetadataChanged)
        }
    )
}

fn read_data_removed(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentDeleteRead)
        }
    )
}

/// The frame id a Delta table carries (`None` for tables made before ids existed).
fn frame_id(table: &DeltaTable) -> Result<Option<&str>> {
    Ok(table
        .snapshot()?
        .metadata()
        .configuration()
        .get(FRAME_ID_KEY)
        .map(String::as_str))
}

/// The Arrow schema a frame stores (every column nullable; partition columns are checked
/// for nulls on write).
pub fn arrow_schema(def: &FrameDef) -> Result<SchemaRef> {
    let fields = def
        .columns
        .iter()
        .map(|c| Field::new(&c.name, c.ty.arrow(), true))
        .collect::<Vec<_>>();
    Ok(Arc::new(Schema::new(fields)))
}

#[derive(Debug, Clone)]
pub struct Frames {
    meadow: Meadow,
    registry: Registry,
    cell_target_bytes: u64,
    /// Latest snapshots by frame id (ids are unique per creation, so a re-created frame
    /// never finds its predecessor's).
    snapshots: Arc<std::sync::Mutex<std::collections::HashMap<String, DeltaTable>>>,
}

impl Frames {
    /// `cell_target_bytes` comes from leafcutter sizing (see `bees::target_cell_size`).
    pub fn new(meadow: Meadow, cell_target_bytes: u64) -> Self {
        Frames {
            registry: Registry::new(meadow.clone()),
            meadow,
            cell_target_bytes,
            snapshots: Default::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn meadow(&self) -> &Meadow {
        &self.meadow
    }

    pub fn cell_target_bytes(&self) -> u64 {
        self.cell_target_bytes
    }

    fn table_url(&self, frame: &FrameRef) -> Url {
        self.meadow.dir_url(&frame.parts())
    }

    fn builder(&self, url: Url) -> Result<DeltaTableBuilder> {
        Ok(
            DeltaTableBuilder::from_url(url.clone())?
                .with_storage_backend(self.meadow.store(), url),
        )
    }

    /// Create a frame: registry entry first (the race-safe step), then its Delta table.
    /// `Ok(false)` when an identical frame already existed.
    pub async fn create_frame(&self, def: &FrameDef) -> Result<bool> {
        let created = self.registry.create_frame(def).await?;
        // The table must carry the registered definition's id: ours, or a racing creator's.
        let registered = if created {
            def.clone()
        } else {
            self.registry.frame(&def.frame).await?
        };
        self.ensure_table(&registered).await?;
        Ok(created)
    }

    /// Make the frame's Delta table the one of `def`: create it when missing, replace it when
    /// it is left from a dropped frame of the same name (its cells are removed in the new
    /// table's first commit and left for vacuum), and leave it alone when it already carries
    /// `def.id`, because then a racing creator made it and may have appended to it since.
    async fn ensure_table(&self, def: &FrameDef) -> Result<DeltaTable> {
        let url = self.table_url(&def.frame);
        let schema = arrow_schema(def)?;
        // Each lost race means another writer made progress; a few rounds settle it.
        for _ in 0..COMMIT_RETRIES {
            let mut table = self.builder(url.clone())?.build()?;
            let exists = table.verify_deltatable_existence().await?;
            if exists {
                table.load().await?;
                if def.id.is_empty() || frame_id(&table)? == Some(def.id.as_str()) {
                    return Ok(table);
                }
            }
            let mode = if exists {
                SaveMode::Overwrite
            } else {
                SaveMode::ErrorIfExists
            };
            let mut builder = table
                .create()
                .with_table_name(&def.frame.frame)
                .with_save_mode(mode)
                .with_partition_columns(def.partition_by.clone())
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(CHECKPOINT_INTERVAL.to_string()),
                )
                // Our own key is not a Delta property: let it through.
                .with_raise_if_key_not_exists(false)
                .with_configuration([(FRAME_ID_KEY, Some(def.id.as_str()))]);
            for field in schema.fields() {
                let kernel_type = field
                    .data_type()
                    .try_into_kernel()
                    .map_err(|e| Error::internal(format!("column {}: {e}", field.name())))?;
                builder = builder.with_column(field.name(), kernel_type, true, None);
            }
            match builder.await {
                Ok(table) => return Ok(table),
                Err(e) if lost_race(&e) => {} // to another creator or replacer: look again
                // `SaveMode::ErrorIfExists` meeting a table made after we looked.
                Err(_)
                    if !exists
                        && self
                            .builder(url.clone())?
                            .build()?
                            .verify_deltatable_existence()
                            .await? => {}
                Err(e) => {
                    return Err(Error::from(e).context(format!("creating frame {}", def.frame)));
                }
            }
        }
        Err(Error::conflict(format!(
            "creating frame {}: other writers kept changing its table; try again",
            def.frame
        )))
    }

    /// Open a frame at its latest version, or at `version` (time travel).
    pub async fn open(&self, frame: &FrameRef, version: Option<i64>) -> Result<Frame> {
        let def = self.registry.frame(frame).await?;
        if version.is_none() && !def.id.is_empty() {
            // The snapshot of an earlier open, brought forward by reading only the log
            // entries committed since (a full load replays the log from its checkpoint).
            let cached = self
                .snapshots
                .lock()
                .expect("snapshots")
                .get(&def.id)
                .cloned();
            if let Some(mut table) = cached {
                table.update_incremental(None).await?;
                self.remember(&def, &table);
                return Ok(Frame { def, table });
            }
        }
        let frame = self.load(def, version).await?;
        if version.is_none() {
            self.remember(&frame.def, &frame.table);
        }
        Ok(frame)
    }

    /// Keep a frame's latest snapshot for the next open (a few frames' worth).
    fn remember(&self, def: &FrameDef, table: &DeltaTable) {
        if def.id.is_empty() || frame_id(table).ok().flatten() != Some(def.id.as_str()) {
            return;
        }
        let mut cache = self.snapshots.lock().expect("snapshots");
        if cache.len() >= SNAPSHOT_CACHE && !cache.contains_key(&def.id) {
            cache.clear(); // simple and bounded; the next opens refill it
        }
        cache.insert(def.id.clone(), table.clone());
    }

    async fn load(&self, def: FrameDef, version: Option<i64>) -> Result<Frame> {
        let url = self.table_url(&def.frame);
        let name = def.frame.clone();
        let mut builder = self.builder(url.clone())?;
        if let Some(v) = version {
            if v < 0 {
                return Err(Error::invalid(format!(
                    "frame version must be ≥ 0, got {v}"
                )));
            }
            builder = builder.with_version(v as u64);
        }
        let table = match builder.load().await {
            Ok(t) if version.is_some() || def.id.is_empty() => t,
            Ok(t) if frame_id(&t)? == Some(def.id.as_str()) => t,
            // The table is left from a dropped frame of this name: finish the creation
            // rather than read or write the old one.
            Ok(_) => self.ensure_table(&def).await?,
            Err(e) => {
                let e = Error::from(e).context(format!("opening frame {name}"));
                let Some(v) = version else {
                    // Its creator has not made the table yet (or stopped before it).
                    let t = self.builder(url)?.build()?;
                    if !def.id.is_empty() && !t.verify_deltatable_existence().await? {
                        let table = self.ensure_table(&def).await?;
                        return Ok(Frame { def, table });
                    }
                    return Err(e);
                };
                // Asked for a version past the end: say so plainly.
                let latest = self.builder(url)?.build()?.get_latest_version().await?;
                if v as u64 > latest {
                    return Err(Error::not_found(format!(
                        "frame {name} has no version {v} (latest is {latest})"
                    )));
                }
                return Err(e);
            }
        };
        Ok(Frame { def, table })
    }

    /// The cells of an opened frame.
    pub fn cells(&self, frame: &Frame) -> Result<Vec<Cell>> {
        let table = self.meadow.path(&frame.def.frame.parts().join("/"));
        Ok(frame
            .table
            .snapshot()?
            .log_data()
            .iter()
            .map(|f| Cell {
                path: f.path().to_string(),
                bytes: f.size().max(0) as u64,
                key: crate::cache::key(&format!("{table}/{}", f.object_store_path())),
            })
            .collect())
    }

    pub async fn info(&self, frame: &FrameRef) -> Result<FrameInfo> {
        self.open(frame, None).await?.info()
    }

    /// Append rows or replace them all, in one commit (readers see the old rows or the
    /// new, never a mix). Data is cast to the frame's schema first: a bad value, an unknown
    /// column or a null partition value fails the call and nothing is committed.
    pub async fn write(
        &self,
        name: &FrameRef,
        batches: Vec<RecordBatch>,
        mode: WriteMode,
        ctx: WriteCtx,
    ) -> Result<WriteReport> {
        let mode = match mode {
            WriteMode::Append => SaveMode::Append,
            WriteMode::Overwrite => SaveMode::Overwrite,
        };
        let started = Instant::now();
        let mut frame = self.open(name, None).await?;
        let full = name;
        let schema = frame.arrow_schema()?;
        let mut conformed = Vec::with_capacity(batches.len());
        for batch in &batches {
            let batch = conform(&frame.def, &schema, batch)
                .map_err(|e| e.context(format!("cannot write to {full}")))?;
            if batch.num_rows() > 0 {
                conformed.push(batch);
            }
        }
        let rows: u64 = conformed.iter().map(|b| b.num_rows() as u64).sum();
        if conformed.is_empty() {
            if mode == SaveMode::Append {
                return Ok(WriteReport {
                    version: frame.version(),
                    cells_written: 0,
                    rows_written: 0,
                    bytes_written: 0,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
            conformed.push(RecordBatch::new_empty(schema.clone()));
        }
        let mut commit = CommitProperties::default().with_max_retries(COMMIT_RETRIES);
        if let Some(t) = ctx.txn {
            commit = commit.with_application_transaction(Transaction::new(t.app_id, t.version));
        }
        let mut attempts = 0;
        let table = loop {
            let mut writer = frame.table.clone().write(conformed.clone());
            if let Some(session) = &ctx.session {
                writer = writer.with_session_state(session.clone());
            }
            // Columns added to the definition (schema evolution) join the table's schema
            // in this commit.
            if frame.lacks_columns()? {
                writer = writer.with_schema_mode(SchemaMode::Merge);
            }
            let written = writer
                .with_save_mode(mode)
                .with_writer_properties(writer_properties())
                .with_target_file_size(NonZeroU64::new(self.cell_target_bytes))
                .with_commit_properties(commit.clone())
                .await;
            match written {
                Ok(table) => break table,
                // Two processes creating the same frame at once: deltalake commits the loser's
                // identical table definition as a later version, which conflicts with appends
                // based on the first. And deltalake counts an append as reading the whole
                // table, so a DELETE, UPDATE or compaction committed meanwhile fails it; an
                // append reads nothing, so it goes on top of the new version. Neither is a
                // real conflict while the frame is still this one.
                Err(e)
                    if (metadata_changed(&e)
                        || (mode == SaveMode::Append && read_data_removed(&e)))
                        && attempts < 10 =>
                {
                    attempts += 1;
                    let again = self.open(name, None).await?;
                    if again.def.id != frame.def.id {
                        return Err(Error::from(e).context(format!(
                            "writing to {full}: the frame was dropped and created again"
                        )));
                    }
                    frame = again;
                }
                Err(e) => return Err(Error::from(e).context(format!("writing to {full}"))),
            }
        };
        let version = table.version().unwrap_or(0);
        let (cells, bytes) = added_cells(&table, version).await?;
        Ok(WriteReport {
            version: version as i64,
            cells_written: cells,
            rows_written: rows,
            bytes_written: bytes,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The version recorded for an exactly-once `app_id`, if any.
    pub async fn txn_version(&self, frame: &FrameRef, app_id: &str) -> Result<Option<i64>> {
        let frame = self.open(frame, None).await?;
        Ok(frame
            .table
            .snapshot()?
            .transaction_version(frame.table.log_store().as_ref(), app_id)
            .await?)
    }

    /// Merge small cells into cells of the target size (Delta optimize; readers see the
    /// same rows before and after). Returns (cells removed, cells added).
    pub async fn compact(
        &self,
        name: &FrameRef,
        session: Arc<dyn datafusion::catalog::Session>,
    ) -> Result<(u64, u64)> {
        let frame = self.open(name, None).await?;
        let (_, metrics) = frame
            .table
            .optimize()
            .with_target_size(NonZeroU64::new(self.cell_target_bytes.max(1)).expect("≥ 1"))
            .with_writer_properties(writer_properties())
            .with_session_state(session)
            .with_commit_properties(CommitProperties::default().with_max_retries(COMMIT_RETRIES))
            .await
            .map_err(|e| Error::from(e).context(format!("compacting {name}")))?;
        Ok((metrics.num_files_removed, metrics.num_files_added))
    }

    /// Delete cells no version newer than `retention` refers to any more. Returns how many.
    pub async fn vacuum(&self, name: &FrameRef, retention: std::time::Duration) -> Result<usize> {
        let frame = self.open(name, None).await?;
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| Error::invalid(format!("vacuum retention: {e}")))?;
        let (_, metrics) = frame
            .table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| Error::from(e).context(format!("vacuuming {name}")))?;
        Ok(metrics.files_deleted.len())
    }

    /// Remove a frame from the listing. Its cells stay in the meadow until vacuumed.
    pub async fn drop_frame(&self, frame: &FrameRef) -> Result<()> {
        self.registry.drop_frame(frame).await.map(|_| ())
    }
}

/// A DataFusion session for the Delta writer (its planner and settings) on `runtime`, so the
/// write runs in a chamber's memory pool and scratch dir.
pub fn write_session(
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> Arc<dyn datafusion::catalog::Session> {
    Arc::new(deltalake::delta_datafusion::DeltaSessionContext::with_runtime_env(runtime).state())
}

/// Parquet cells: LZ4 (raw) compression and page-level statistics for pruning.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Cells and bytes added by the commit at `version` (read from its log entry).
async fn added_cells(table: &DeltaTable, version: u64) -> Result<(u64, u64)> {
    let Some(entry) = table.log_store().read_commit_entry(version).await? else {
        return Ok((0, 0));
    };
    let (mut cells, mut bytes) = (0, 0);
    for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(add) = action.get("add") {
            cells += 1;
            bytes += add.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
        }
    }
    Ok((cells, bytes))
}

/// Cast a batch to the frame's schema, by column name. Columns the batch lacks are null;
/// columns the frame lacks are an error; values that do not fit the type are an error.
pub fn conform(def: &FrameDef, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let input = batch.schema();
    for field in input.fields() {
        if schema.field_with_name(field.name()).is_err() {
            let names: Vec<&str> = def.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::invalid(format!(
                "unknown column {}; the frame's columns are: {}",
                field.name(),
                names.join(", ")
            )));
        }
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, col) in schema.fields().iter().zip(&def.columns) {
        let array = match input.index_of(field.name()) {
            Ok(i) => {
                let src = batch.column(i);
                let cast = cast_with_options(src, field.data_type(), &opts).map_err(|e| {
                    Error::invalid(format!(
                        "column {} ({} to {}): {e}",
                        field.name(),
                        src.data_type(),
                        col.ty
                    ))
                })?;
                check_unsigned(&col.name, col.ty, &cast)?;
                cast
            }
            Err(_) => new_null_array(field.data_type(), batch.num_rows()),
        };
        if def.is_partition(field.name()) && array.null_count() > 0 {
            return Err(Error::invalid(format!(
                "null partition value in column {}: partition columns need a value in every row",
                field.name()
            )));
        }
        columns.push(array);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Unsigned columns live in wider signed types; keep their values in the unsigned range.
fn check_unsigned(name: &str, ty: ColumnType, array: &ArrayRef) -> Result<()> {
    let Some(max) = ty.unsigned_max() else {
        return Ok(());
    };
    let as_i64 = cast_with_options(array, &DataType::Int64, &CastOptions::default())?;
    let values = as_i64
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("cast to Int64 gives Int64Array");
    if let Some(bad) = values.iter().flatten().find(|v| *v < 0 || *v > max) {
        return Err(Error::invalid(format!(
            "column {name}: value {bad} is out of range for {ty}"
        )));
    }
    Ok(())
}

//! From buffers to frames: replaying the WAL after a start, committing due buffers as cells
//! with their exactly-once markers (rejects first, then rows), creating frames from the
//! first messages, and putting a failed commit's records back for the next round.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use tokio::sync::watch;

use super::buffer::Key;
use super::payload::{self, Row};
use super::route::Route;
use super::status::COMMIT_SAMPLES;
use super::wal::Record;
use super::{Inner, now_ms};
use crate::config::{NewFields, PayloadFormat};
use crate::error::{Error, ErrorKind, Result};
use crate::frames::{FrameDef, Txn, WriteCtx, WriteMode};
use crate::names::FrameRef;

/// Messages turned from JSON rows into Arrow at a time when committing.
const DECODE_CHUNK: usize = 8192;

/// Payload fields of these rows the schema has no column for. The columns the route adds
/// (topic levels, the receive time) are filled only where the frame has them.
fn new_fields(route: &Route, schema: &Schema, rows: &[(usize, Row)]) -> BTreeSet<String> {
    rows.iter()
        .flat_map(|(_, r)| r.keys())
        .filter(|k| {
            schema.index_of(k).is_err()
                && !route.columns.contains_key(*k)
                && route.received_at.as_deref() != Some(k.as_str())
        })
        .cloned()
        .collect()
}

/// Where messages go whose topic names no valid frame, or a frame that does not exist and
/// is not made (`ingest.auto_create = false`).
pub(super) fn unroutable() -> FrameRef {
    FrameRef::new("apiary", "ingest", "unroutable").expect("a valid name")
}

/// Unroutable messages are rejects themselves: they have no rejects frame of their own.
fn rejects_of(frame: &FrameRef) -> FrameRef {
    if *frame == unroutable() {
        frame.clone()
    } else {
        frame.rejects()
    }
}

impl Inner {
    /// Put WAL records back into buffers, except what the frames say is committed.
    pub(super) async fn replay(&self) -> Result<()> {
        let records = self.wal.records()?;
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        // Which acks may not have gone out before the stop: at most a receive maximum of
        // each publisher's latest messages (a connection reads no more while that many wait).
        let mut unanswered = vec![false; n];
        let mut latest: std::collections::HashMap<&str, usize> = Default::default();
        for (i, rec) in records.iter().enumerate().rev() {
            let count = latest.entry(&*rec.session).or_default();
            unanswered[i] = *count < self.receive_max;
            *count += 1;
        }
        let mut skipped = 0;
        for (rec, unanswered) in records.into_iter().zip(unanswered) {
            let key = self.key_for(&rec);
            let main = self.version(&key.frame, &self.app_id(key.route)).await?;
            let mut st = self.state.lock().expect("ingest lock");
            st.remember(&rec, 0, !unanswered);
            // Its rows are in (and its rejects, committed before them, too). Anything else
            // goes back to a buffer, and commit() skips what either frame already has.
            if (rec.seq as i64) <= main {
                st.replayed_committed(rec.seq);
                skipped += 1;
            } else {
                st.push(key, rec);
            }
        }
        tracing::info!(
            records = n,
            already_committed = skipped,
            "replayed the write-ahead log"
        );
        Ok(())
    }

    /// The txn version committed under `app_id` into `frame` (cached; -1 for none).
    pub(super) async fn version(&self, frame: &FrameRef, app_id: &str) -> Result<i64> {
        let k = (frame.clone(), app_id.to_string());
        if let Some(v) = self.state.lock().expect("ingest lock").versions.get(&k) {
            return Ok(*v);
        }
        let v = match self.frames.txn_version(frame, app_id).await {
            Ok(v) => v.unwrap_or(-1),
            Err(e) if e.kind == ErrorKind::NotFound => -1,
            Err(e) => return Err(e),
        };
        self.state
            .lock()
            .expect("ingest lock")
            .versions
            .insert(k, v);
        Ok(v)
    }

    pub(super) async fn commit_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = (self.config.max_latency.0 / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => self.commit_due(false).await,
            }
        }
    }

    /// Commit the buffers that are big or old enough (all of them when `all`).
    pub(super) async fn commit_due(&self, all: bool) {
        let due = self.state.lock().expect("ingest lock").take_due(
            all,
            self.cell_target,
            self.config.max_latency.0,
            self.config.buffer_max.0 as usize,
        );
        for (key, records) in due {
            let started = Instant::now();
            match self.commit(&key, &records).await {
                Ok(()) => {
                    {
                        let mut c = self.stats.commit_ms.lock().expect("ingest stats");
                        c.push_back(started.elapsed().as_millis() as u32);
                        if c.len() > COMMIT_SAMPLES {
                            c.pop_front();
                        }
                    }
                    let trim = self.state.lock().expect("ingest lock").committed(&records);
                    if let Err(e) = self.wal.remove(trim).await {
                        tracing::warn!(error = %e, "trimming the write-ahead log failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(frame = %key.frame, error = %e, "ingest commit failed; will retry");
                    let rejects = rejects_of(&key.frame);
                    self.state
                        .lock()
                        .expect("ingest lock")
                        .put_back(key, records, &rejects);
                }
            }
        }
    }

    /// Commit one buffer: rejects first, then the rows, each with its exactly-once marker.
    pub(super) async fn commit(&self, key: &Key, records: &[Record]) -> Result<()> {
        let Some(last) = records.iter().map(|r| r.seq).max() else {
            return Ok(());
        };
        let route = &self.routes[key.route as usize];
        let main_app = self.app_id(key.route);
        let main_v = self.version(&key.frame, &main_app).await?;
        let mut rejects: Vec<(&Record, String)> = Vec::new();
        let unroutable = key.frame == unroutable();
        let def = if unroutable {
            None
        } else {
            match self.frame_def(route, &key.frame, records).await {
                Ok(d) => Some(d),
                // The frame is not there and is not made: its messages are unroutable.
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::InvalidInput) => {
                    for r in records {
                        rejects.push((r, e.message.clone()));
                    }
                    None
                }
                Err(e) => return Err(e),
            }
        };
        // Rejects of an existing frame go beside it; unroutable ones to one frame for all,
        // each source frame with its own marker (their buffers commit in any order).
        let (rej_frame, rej_app) = if def.is_some() || unroutable {
            (rejects_of(&key.frame), main_app.clone())
        } else {
            (self::unroutable(), format!("{main_app}:{}", key.frame))
        };
        let rej_v = self.version(&rej_frame, &rej_app).await?;
        let mut batch: Option<Vec<RecordBatch>> = None;
        if let Some(mut def) = def {
            let mut schema = crate::frames::arrow_schema(&def)?;
            let csv_cols: Vec<String> = def
                .columns
                .iter()
                .map(|c| c.name.clone())
                .filter(|c| {
                    !route.columns.contains_key(c) && route.received_at.as_deref() != Some(c)
                })
                .collect();
            // JSON rows are bulky (a map per row): turn them into Arrow a chunk at a time.
            let mut batches = Vec::new();
            for (c, chunk) in records.chunks(DECODE_CHUNK).enumerate() {
                let mut rows: Vec<(usize, Row)> = Vec::new();
                for (j, r) in chunk.iter().enumerate() {
                    if r.seq as i64 <= main_v {
                        continue;
                    }
                    let i = c * DECODE_CHUNK + j;
                    match payload::rows(route, r, self.config.max_payload.0 as usize, &csv_cols) {
                        Ok(rs) => rows.extend(rs.into_iter().map(|row| (i, row))),
                        Err(e) => rejects.push((r, e)),
                    }
                }
                let new = new_fields(route, &schema, &rows);
                if !new.is_empty() {
                    match route.new_fields {
                        NewFields::Ignore => {}
                        NewFields::Reject => {
                            rows.retain(|(i, row)| {
                                let extra: Vec<&str> = row
                                    .keys()
                                    .filter(|k| new.contains(*k))
                                    .map(String::as_str)
                                    .collect();
                                if extra.is_empty() {
                                    return true;
                                }
                                rejects.push((
                                    &records[*i],
                                    format!(
                                        "no column for {} in frame {} (the route takes no new fields)",
                                        extra.join(", "),
                                        key.frame
                                    ),
                                ));
                                false
                            });
                        }
                        NewFields::Evolve => {
                            def = self.evolve(route, &key.frame, &new, &rows).await?;
                            schema = crate::frames::arrow_schema(&def)?;
                        }
                    }
                }
                for (_, row) in &mut rows {
                    row.retain(|k, _| schema.index_of(k).is_ok());
                }
                let (b, bad) = payload::decode_each(&schema, &def.partition_by, &rows);
                batches.extend(b);
                for (i, e) in bad {
                    rejects.push((&records[i], e));
                }
            }
            batch = Some(batches);
        } else if unroutable {
            for r in records {
                let why = route
                    .frame_for(&r.topic)
                    .err()
                    .map(|e| e.message)
                    .unwrap_or_default();
                rejects.push((r, why));
            }
        }
        rejects.retain(|(r, _)| r.seq as i64 > rej_v);
        rejects.sort_by_key(|(r, _)| r.seq);
        rejects.dedup_by_key(|(r, _)| r.seq);

        if !rejects.is_empty() {
            self.ensure_rejects_frame(&rej_frame).await?;
            let rb = payload::rejects_batch(&rejects);
            self.append(&rej_frame, vec![rb], &rej_app, last).await?;
            self.state
                .lock()
                .expect("ingest lock")
                .versions
                .insert((rej_frame.clone(), rej_app), last as i64);
            self.stats
                .rejected
                .fetch_add(rejects.len() as u64, Ordering::Relaxed);
        }
        if let Some(batch) = batch
            && batch.iter().any(|b| b.num_rows() > 0)
        {
            let rows = batch.iter().map(|b| b.num_rows() as u64).sum();
            self.append(&key.frame, batch, &main_app, last).await?;
            self.state
                .lock()
                .expect("ingest lock")
                .versions
                .insert((key.frame.clone(), main_app), last as i64);
            self.stats.committed_rows.fetch_add(rows, Ordering::Relaxed);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_commit_ms
            .store(now_ms() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(super) async fn append(
        &self,
        frame: &FrameRef,
        batches: Vec<RecordBatch>,
        app_id: &str,
        version: u64,
    ) -> Result<()> {
        let app_id = app_id.to_string();
        self.pool
            .run(&format!("ingest {frame}"), async |chamber| {
                let ctx = WriteCtx {
                    txn: Some(Txn {
                        app_id,
                        version: version as i64,
                    }),
                    session: Some(crate::frames::write_session(chamber.runtime_env())),
                };
                self.frames
                    .write(frame, batches, WriteMode::Append, ctx)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// The frame's definition, creating it (and its hive and box) from the messages when
    /// it does not exist and auto-create is on.
    pub(super) async fn frame_def(
        &self,
        route: &Route,
        frame: &FrameRef,
        records: &[Record],
    ) -> Result<FrameDef> {
        let reg = self.frames.registry();
        match reg.frame(frame).await {
            Ok(d) => return Ok(d),
            Err(e) if e.kind == ErrorKind::NotFound && self.config.auto_create => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "frame {frame} does not exist and ingest.auto_create is off ({})",
                    e.message
                )));
            }
            Err(e) => return Err(e),
        }
        let sample: Vec<Row> = records
            .iter()
            .take(1000)
            .filter_map(|r| payload::rows(route, r, self.config.max_payload.0 as usize, &[]).ok())
            .flatten()
            .collect();
        if sample.is_empty() || route.format == PayloadFormat::Csv {
            return Err(Error::not_found(format!(
                "frame not found: {frame} (and no JSON message to infer its columns from)"
            )));
        }
        let columns = payload::infer_columns(route, &sample).map_err(Error::invalid)?;
        reg.create_hive(&frame.hive).await?;
        reg.create_box(&frame.hive, &frame.box_name).await?;
        let def = FrameDef::new(frame, columns, vec![])?;
        match self.frames.create_frame(&def).await {
            Ok(_) => {
                tracing::info!(frame = %frame, "created frame from incoming messages");
                Ok(def)
            }
            // Another node made it first (perhaps with other columns): use theirs.
            Err(e) if e.kind == ErrorKind::AlreadyExists => reg.frame(frame).await,
            Err(e) => Err(e),
        }
    }

    /// Add columns for new fields to the frame (their types inferred from the rows that
    /// have them); fields that cannot be column names stay out, and their rows are left to
    /// fail as type conflicts do: in the rejects frame.
    pub(super) async fn evolve(
        &self,
        route: &Route,
        frame: &FrameRef,
        new: &BTreeSet<String>,
        rows: &[(usize, Row)],
    ) -> Result<FrameDef> {
        let sample: Vec<Row> = rows
            .iter()
            .map(|(_, r)| {
                r.iter()
                    .filter(|(k, _)| new.contains(*k) && crate::names::is_name(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Row>()
            })
            .filter(|r| !r.is_empty())
            .take(1000)
            .collect();
        if sample.is_empty() {
            return self.frames.registry().frame(frame).await;
        }
        let columns = payload::infer_columns(route, &sample).map_err(Error::invalid)?;
        let def = self.frames.registry().add_columns(frame, &columns).await?;
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        tracing::info!(frame = %frame, columns = ?names, "added columns for new fields");
        Ok(def)
    }

    pub(super) async fn ensure_rejects_frame(&self, frame: &FrameRef) -> Result<()> {
        let reg = self.frames.registry();
        reg.create_hive(&frame.hive).await?;
        reg.create_box(&frame.hive, &frame.box_name).await?;
        let def = FrameDef::new(frame, payload::rejects_columns(), vec![])?;
        match self.frames.create_frame(&def).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                Err(e.context("the rejects frame has other columns"))
            }
            Err(e) => Err(e),
        }
    }
}

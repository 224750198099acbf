//! The worker's side: forage for tasks addressed to this node, claim each with a
//! put-if-absent, run it in a chamber and write its result in Arrow IPC parts and its status.
//! The polling interval shrinks when work is found and doubles while idle, up to a cap, so an
//! idle swarm costs few requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use arrow::ipc::writer::StreamWriter;
use futures::StreamExt;

use super::{Manifest, StatusDoc, Swarm, TaskDoc, TaskState};
use crate::bees::Band;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Attempt, Dir, Key};
use crate::meadow::{encode_json, format_version};
use crate::sql::Session;
use crate::sql::fragment;

/// A result part is written once it holds this much.
const PART_BYTES: usize = 8 << 20;

pub async fn forage(swarm: Swarm) {
    let cfg = &swarm.inner.config;
    let (min, max) = (cfg.forage_min.0, cfg.forage_max.0);
    let mut wait = min;
    let cancel = swarm.inner.cancel.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
        // A task cut short by shutdown is given out again by its coordinator.
        let looked = tokio::select! {
            looked = look(&swarm) => looked,
            _ = cancel.cancelled() => return,
        };
        let found = match looked {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "looking for swarm tasks failed");
                0
            }
        };
        // A cold node backs off more slowly (it has the most room for work); an idle one
        // still ends at the cap, which bounds what an idle swarm costs.
        let grow = if swarm.inner.pool.band() == Band::Cold {
            1.5
        } else {
            2.0
        };
        wait = if found > 0 {
            min
        } else {
            wait.mul_f64(grow).min(max)
        };
    }
}

/// One look at the queries: claim and start what is ours. The number of tasks started.
async fn look(swarm: &Swarm) -> Result<usize> {
    let i = &swarm.inner;
    if !i.pool.accepts_swarm_tasks() {
        return Ok(0);
    }
    let free = i
        .pool
        .bee_status()
        .iter()
        .filter(|b| b.state == crate::bees::BeeState::Idle)
        .count();
    if free == 0 {
        return Ok(0);
    }
    let paths = i.meadow.list_all(&Dir::Queries.to_string()).await?;
    *i.listing.lock().expect("listing") = Some((std::time::Instant::now(), paths.clone()));
    let mut statuses = HashSet::new();
    let mut mine = Vec::new();
    // A task given out again: only its latest attempt is worth running.
    let mut latest = HashMap::new();
    for p in &paths {
        match Key::parse(p) {
            Some(Key::Status { query, attempt }) => {
                statuses.insert((query, attempt));
            }
            Some(Key::Task {
                query,
                attempt,
                node,
            }) => {
                let e = latest
                    .entry((query.clone(), attempt.task))
                    .or_insert(attempt.attempt);
                *e = (*e).max(attempt.attempt);
                if node == i.node_id {
                    mine.push((query, attempt, p.clone()));
                }
            }
            _ => {}
        }
    }
    let mut started = 0;
    for (query, attempt, task_path) in mine {
        if started == free
            || statuses.contains(&(query.clone(), attempt))
            || latest.get(&(query.clone(), attempt.task)) != Some(&attempt.attempt)
        {
            continue;
        }
        // Read before claiming: a query of another format is left alone, never misread.
        let Some(manifest) = manifest_to_run(swarm, &query).await? else {
            continue;
        };
        let status = Key::Status {
            query: query.clone(),
            attempt,
        }
        .to_string();
        let claim = encode_json(&StatusDoc::new(&i.node_id, TaskState::Claimed))?;
        if !i.meadow.put_if_absent(&status, claim).await? {
            continue; // claimed already
        }
        started += 1;
        let me = swarm.clone();
        tokio::spawn(async move {
            let outcome = me.run_task(&query, manifest, attempt, &task_path).await;
            let manifest = Key::Manifest(query.clone()).to_string();
            if !matches!(me.inner.meadow.get(&manifest).await, Ok(Some(_))) {
                // The coordinator finished without us (it gave the task to another node, or
                // gave up): take our result back out rather than leave it behind.
                let results = Dir::Results {
                    query: query.clone(),
                    attempt,
                };
                if let Ok(paths) = me.inner.meadow.list_all(&results.to_string()).await {
                    let _ = super::delete_all(&me.inner.meadow, paths).await;
                }
                let _ = me.inner.meadow.delete(&status).await;
                return;
            }
            let mut doc = StatusDoc::new(&me.inner.node_id, TaskState::Done);
            match outcome {
                Ok((parts, rows)) => {
                    doc.parts = parts;
                    doc.rows = rows;
                    me.inner.counters.tasks_done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(query = %query, task = %attempt, error = %e, "swarm task failed");
                    doc.state = TaskState::Failed;
                    doc.error = Some(e.to_string());
                    me.inner
                        .counters
                        .tasks_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            match encode_json(&doc) {
                Ok(body) => {
                    if let Err(e) = me.inner.meadow.put(&status, body).await {
                        tracing::warn!(query = %query, task = %attempt, error = %e, "swarm task status not written");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "swarm task status not encoded"),
            }
        });
    }
    Ok(started)
}

/// The manifest of a query with a task for this node, if this node will run it: the query is
/// still there and of this node's format (a coordinator of this release gives work only to
/// its own format; this guards against any other).
async fn manifest_to_run(swarm: &Swarm, query: &str) -> Result<Option<Manifest>> {
    let i = &swarm.inner;
    if i.refused.lock().expect("refused").contains(query) {
        return Ok(None);
    }
    let why = match i
        .meadow
        .get_json::<Manifest>(&Key::Manifest(query.into()).to_string())
        .await
    {
        Ok(None) => return Ok(None), // finished or abandoned
        Ok(Some(m)) => match crate::meadow::unreadable_format(m.value.format_version as u64) {
            None if m.value.format_version == format_version() => return Ok(Some(m.value)),
            None => format!(
                "its format {} is not this node's {}",
                m.value.format_version,
                format_version()
            ),
            Some(why) => why,
        },
        Err(e) if e.kind == ErrorKind::Unsupported => e.message,
        Err(e) => return Err(e),
    };
    tracing::warn!(query, "not running a swarm task given to this node: {why}");
    let mut refused = i.refused.lock().expect("refused");
    if refused.len() >= 1024 {
        refused.clear(); // said again at worst
    }
    refused.insert(query.into());
    Ok(None)
}

impl Swarm {
    /// Run one claimed task: its result parts and row count.
    async fn run_task(
        &self,
        query: &str,
        manifest: Manifest,
        attempt: Attempt,
        task_path: &str,
    ) -> Result<(u32, u64)> {
        let i = &self.inner;
        let missing = |what: &str| Error::not_found(format!("swarm query {query}: {what} is gone"));
        let task = i
            .meadow
            .get_json::<TaskDoc>(task_path)
            .await?
            .ok_or_else(|| missing("task"))?
            .value;
        let stage = i
            .meadow
            .get(&Key::Stage(query.into()).to_string())
            .await?
            .ok_or_else(|| missing("stage"))?
            .value;
        let session = Session::new(
            i.frames.clone(),
            i.pool.clone(),
            i.udfs.clone(),
            i.session_config.clone(),
        );
        let part = |part| {
            Key::ResultPart {
                query: query.into(),
                attempt,
                part,
            }
            .to_string()
        };
        i.pool
            .run(&format!("swarm task {query}/{attempt}"), async |chamber| {
                let state = session.stage_state(chamber, &manifest.udfs).await?;
                let scan = fragment::scan(&i.frames, &state, &manifest.scan, &task.cells).await?;
                let ctx = state.task_ctx();
                let plan = fragment::decode(&stage, scan, &ctx)?;
                let schema = plan.schema();
                let mut stream = plan.execute(0, ctx)?;
                let (mut parts, mut rows) = (0u32, 0u64);
                let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    rows += batch.num_rows() as u64;
                    writer.write(&batch)?;
                    if writer.get_ref().len() >= PART_BYTES {
                        writer.finish()?;
                        let body = std::mem::replace(
                            &mut writer,
                            StreamWriter::try_new(Vec::new(), &schema)?,
                        )
                        .into_inner()?;
                        i.meadow.put(&part(parts), body.into()).await?;
                        parts += 1;
                    }
                }
                writer.finish()?;
                i.meadow
                    .put(&part(parts), writer.into_inner()?.into())
                    .await?;
                Ok((parts + 1, rows))
            })
            .await
    }
}

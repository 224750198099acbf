//! The worker's side: forage for tasks addressed to this node, claim each with a
//! put-if-absent, run it in a chamber and write its result in Arrow IPC parts and its status.
//! The polling interval shrinks when work is found and doubles while idle, up to a cap, so an
//! idle swarm costs few requests.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use arrow::ipc::writer::StreamWriter;
use futures::StreamExt;

use super::{Manifest, QUERIES, StatusDoc, Swarm, TaskDoc, query_path};
use crate::bees::Band;
use crate::error::{Error, Result};
use crate::meadow::encode_json;
use crate::sql::Session;
use crate::sql::fragment;

/// A result part is written once it holds this much.
const PART_BYTES: usize = 8 << 20;

pub async fn forage(swarm: Swarm) {
    let cfg = &swarm.inner.config;
    let (min, max) = (cfg.forage_min.0, cfg.forage_max.0);
    let mut wait = min;
    let mut stop = swarm.inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let found = match look(&swarm).await {
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

/// A task file name: `<task>-<attempt>-<node>.json`.
fn parse_task(name: &str) -> Option<(u32, u32, &str)> {
    let mut it = name.strip_suffix(".json")?.splitn(3, '-');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?,
    ))
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
        .filter(|b| b.state == "idle")
        .count();
    if free == 0 {
        return Ok(0);
    }
    let paths = i.meadow.list_all(QUERIES).await?;
    *i.listing.lock().expect("listing") = Some((std::time::Instant::now(), paths.clone()));
    let mut statuses = HashSet::new();
    let mut mine = Vec::new();
    // A task given out again: only its latest attempt is worth running.
    let mut latest = std::collections::HashMap::new();
    for p in &paths {
        let parts: Vec<&str> = p
            .strip_prefix(QUERIES)
            .unwrap_or(p)
            .trim_matches('/')
            .split('/')
            .collect();
        match parts.as_slice() {
            [q, "status", s] => {
                statuses.insert(format!("{q}/{}", s.trim_end_matches(".json")));
            }
            [q, "tasks", t] => {
                if let Some((n, a, node)) = parse_task(t) {
                    let e = latest.entry(format!("{q}/{n}")).or_insert(a);
                    *e = (*e).max(a);
                    if node == i.node_id {
                        mine.push((q.to_string(), n, a, p.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    let mut started = 0;
    for (query, n, attempt, task_path) in mine {
        if started == free
            || statuses.contains(&format!("{query}/{n}-{attempt}"))
            || latest.get(&format!("{query}/{n}")) != Some(&attempt)
        {
            continue;
        }
        let status = query_path(&query, &format!("status/{n}-{attempt}.json"));
        let claim = encode_json(&StatusDoc::new(&i.node_id, "claimed"))?;
        if !i.meadow.put_if_absent(&status, claim).await? {
            continue; // claimed already
        }
        started += 1;
        let me = swarm.clone();
        tokio::spawn(async move {
            let outcome = me.run_task(&query, n, attempt, &task_path).await;
            let manifest = query_path(&query, "manifest.json");
            if !matches!(me.inner.meadow.get(&manifest).await, Ok(Some(_))) {
                // The coordinator finished without us (it gave the task to another node, or
                // gave up): take our result back out rather than leave it behind.
                let results = query_path(&query, &format!("results/{n}-{attempt}"));
                if let Ok(paths) = me.inner.meadow.list_all(&results).await {
                    let _ = super::delete_all(&me.inner.meadow, paths).await;
                }
                let _ = me.inner.meadow.delete(&status).await;
                return;
            }
            let mut doc = StatusDoc::new(&me.inner.node_id, "done");
            match outcome {
                Ok((parts, rows)) => {
                    doc.parts = parts;
                    doc.rows = rows;
                    me.inner.counters.tasks_done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(query = %query, task = n, attempt, error = %e, "swarm task failed");
                    doc.state = "failed".into();
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
                        tracing::warn!(query = %query, task = n, error = %e, "swarm task status not written");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "swarm task status not encoded"),
            }
        });
    }
    Ok(started)
}

impl Swarm {
    /// Run one claimed task: its result parts and row count.
    async fn run_task(
        &self,
        query: &str,
        n: u32,
        attempt: u32,
        task_path: &str,
    ) -> Result<(u32, u64)> {
        let i = &self.inner;
        let missing = |what: &str| Error::not_found(format!("swarm query {query}: {what} is gone"));
        let manifest = i
            .meadow
            .get_json::<Manifest>(&query_path(query, "manifest.json"))
            .await?
            .ok_or_else(|| missing("manifest"))?
            .value;
        let task = i
            .meadow
            .get_json::<TaskDoc>(task_path)
            .await?
            .ok_or_else(|| missing("task"))?
            .value;
        let stage = i
            .meadow
            .get(&query_path(query, "stage.bin"))
            .await?
            .ok_or_else(|| missing("stage"))?
            .value;
        let session = Session::new(
            i.frames.clone(),
            i.pool.clone(),
            i.udfs.clone(),
            i.session_config.clone(),
        );
        let results = query_path(query, &format!("results/{n}-{attempt}"));
        i.pool
            .run(&format!("swarm task {query}/{n}"), async |chamber| {
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
                        i.meadow
                            .put(&format!("{results}/{parts}.arrow"), body.into())
                            .await?;
                        parts += 1;
                    }
                }
                writer.finish()?;
                i.meadow
                    .put(
                        &format!("{results}/{parts}.arrow"),
                        writer.into_inner()?.into(),
                    )
                    .await?;
                Ok((parts + 1, rows))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::parse_task;

    #[test]
    fn task_names_carry_task_attempt_and_node() {
        assert_eq!(parse_task("3-2-node-ab12.json"), Some((3, 2, "node-ab12")));
        assert_eq!(parse_task("x-2-node.json"), None);
        assert_eq!(parse_task("3-2-node"), None);
    }
}

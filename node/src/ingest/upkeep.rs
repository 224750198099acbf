//! Small-cell upkeep: whoever holds the swarm's compaction lease merges the small cells of
//! the frames this node ingests into, then deletes cells past the retention.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Inner;
use crate::error::ErrorKind;
use crate::names::FrameRef;

impl Inner {
    /// Small-cell upkeep: whoever holds the swarm's compaction lease merges the small cells
    /// of the frames this node ingests into, then deletes cells past the retention.
    pub(super) async fn upkeep_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.compact_interval.0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let meadow = self.frames.meadow();
            let ttl = (every * 3).max(Duration::from_secs(60));
            match crate::meadow::lease::acquire(meadow, "compaction", &self.node_id, ttl).await {
                Ok(true) => self.upkeep().await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the compaction lease"),
            }
        }
    }

    pub(super) async fn upkeep(&self) {
        let frames: BTreeSet<FrameRef> = self
            .state
            .lock()
            .expect("ingest lock")
            .versions
            .keys()
            // Keys name the frame itself: the rejects frame for rejects markers.
            .map(|(f, _)| f.clone())
            .collect();
        for name in frames {
            let compacted = self
                .pool
                .run(&format!("compact {name}"), async |chamber| {
                    let session = crate::frames::write_session(chamber.runtime_env());
                    self.frames.compact(&name, session).await
                })
                .await;
            match compacted {
                Ok((removed, added)) if removed > 0 => {
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .cells_compacted
                        .fetch_add(removed, Ordering::Relaxed);
                    tracing::info!(frame = %name, removed, added, "merged small cells");
                }
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(frame = %name, error = %e, "compaction failed; next round retries")
                }
            }
            match self
                .frames
                .vacuum(&name, self.config.vacuum_retention.0)
                .await
            {
                Ok(n) => {
                    self.stats
                        .cells_vacuumed
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(frame = %name, error = %e, "vacuum failed; next round retries")
                }
            }
        }
    }
}

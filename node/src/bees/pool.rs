//! The bee pool and its chambers. A chamber is real isolation for one task: a DataFusion
//! `RuntimeEnv` whose memory pool is the bee's budget (operators spill to the bee's scratch
//! directory or fail with resources exhausted), and a deadline after which the task is
//! dropped, which cancels its work. The pool runs at most one task per bee and queues a
//! bounded number more; past that, callers get `Busy` with a retry-after.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::Resources;
use super::colony::{Band, Colony, ColonyStatus, Load};
use crate::config::ColonyConfig;
use crate::error::{Error, ErrorKind, Result};

const MIB: u64 = 1 << 20;

/// Settings of the pool beyond the bee count and budget.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub task_timeout: Duration,
    /// Tasks that may wait for a bee; `None`: 4 × bees.
    pub queue_limit: Option<usize>,
    pub colony: ColonyConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            task_timeout: Duration::from_secs(300),
            queue_limit: None,
            colony: ColonyConfig::default(),
        }
    }
}

#[derive(Debug)]
struct Bee {
    id: usize,
    budget: u64,
    scratch: PathBuf,
    env: Arc<RuntimeEnv>,
    memory: Arc<dyn MemoryPool>,
    busy: AtomicBool,
    task: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Inner {
    bees: Vec<Bee>,
    free: Mutex<Vec<usize>>,
    permits: Semaphore,
    waiting: AtomicUsize,
    queue_limit: usize,
    task_timeout: Duration,
    colony: Colony,
    objects: Arc<dyn ObjectStoreRegistry>,
    scratch_root: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch_root);
    }
}

/// One bee's figures (keys as in the Python SDK's `bee_status()`).
#[derive(Debug, Clone, Serialize)]
pub struct BeeStatus {
    pub bee_id: String,
    pub state: BeeState,
    pub task: Option<String>,
    pub memory_used: u64,
    pub memory_budget: u64,
    pub memory_used_mb: f64,
    pub memory_budget_mb: f64,
}

/// Whether a bee runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BeeState {
    Idle,
    Busy,
}

/// The pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BeePool {
    inner: Arc<Inner>,
}

/// What a task runs in: its bee's runtime (memory pool, scratch) and its deadline.
pub struct Chamber<'a> {
    bee: &'a Bee,
    deadline: Instant,
}

impl Chamber<'_> {
    /// The DataFusion runtime of this chamber: use it for every plan the task executes.
    pub fn runtime_env(&self) -> Arc<RuntimeEnv> {
        self.bee.env.clone()
    }

    pub fn bee_id(&self) -> String {
        format!("bee-{}", self.bee.id)
    }

    pub fn budget(&self) -> u64 {
        self.bee.budget
    }

    pub fn scratch(&self) -> &Path {
        &self.bee.scratch
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl BeePool {
    /// One bee per `resources.bees`, each with its own scratch dir under
    /// `<state_dir>/scratch/<pid>/` (stale dirs of dead processes are removed first).
    pub fn new(resources: &Resources, config: PoolConfig, state_dir: &Path) -> Result<BeePool> {
        config.colony.validate()?;
        let scratch_base = state_dir.join("scratch");
        remove_stale_scratch(&scratch_base);
        let scratch_root = scratch_base.join(std::process::id().to_string());
        let objects: Arc<dyn ObjectStoreRegistry> = Arc::new(DefaultObjectStoreRegistry::new());
        let mut bees = Vec::with_capacity(resources.bees);
        for id in 0..resources.bees {
            let scratch = scratch_root.join(format!("bee-{id}"));
            std::fs::create_dir_all(&scratch).map_err(|e| {
                Error::storage(format!(
                    "cannot create scratch dir {}: {e}",
                    scratch.display()
                ))
            })?;
            let memory: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(resources.memory_per_bee as usize),
                std::num::NonZeroUsize::new(3).expect("3 > 0"),
            ));
            let env = RuntimeEnvBuilder::new()
                .with_memory_pool(memory.clone())
                .with_disk_manager_builder(
                    DiskManagerBuilder::default()
                        .with_mode(DiskManagerMode::Directories(vec![scratch.clone()])),
                )
                .with_object_store_registry(objects.clone())
                .build_arc()?;
            bees.push(Bee {
                id,
                budget: resources.memory_per_bee,
                scratch,
                env,
                memory,
                busy: AtomicBool::new(false),
                task: Mutex::new(None),
            });
        }
        let n = bees.len();
        Ok(BeePool {
            inner: Arc::new(Inner {
                free: Mutex::new((0..n).rev().collect()),
                permits: Semaphore::new(n),
                waiting: AtomicUsize::new(0),
                queue_limit: config.queue_limit.unwrap_or(4 * n),
                task_timeout: config.task_timeout,
                colony: Colony::new(config.colony),
                objects,
                scratch_root,
                bees,
            }),
        })
    }

    /// Object stores registered here are seen by every chamber.
    pub fn object_stores(&self) -> Arc<dyn ObjectStoreRegistry> {
        self.inner.objects.clone()
    }

    pub fn colony(&self) -> &Colony {
        &self.inner.colony
    }

    pub fn bees(&self) -> usize {
        self.inner.bees.len()
    }

    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    pub fn task_timeout(&self) -> Duration {
        self.inner.task_timeout
    }

    /// The load the colony model reads.
    pub fn load(&self) -> Load {
        let inner = &self.inner;
        let n = inner.bees.len().max(1) as f64;
        let busy = inner
            .bees
            .iter()
            .filter(|b| b.busy.load(Ordering::SeqCst))
            .count() as f64;
        let used: u64 = inner.bees.iter().map(|b| b.memory.reserved() as u64).sum();
        let budget: u64 = inner.bees.iter().map(|b| b.budget).sum();
        Load {
            busy: busy / n,
            memory: used as f64 / budget.max(1) as f64,
            queue: self.waiting() as f64 / inner.queue_limit.max(1) as f64,
            backlog: 0.0,
        }
    }

    pub fn temperature(&self) -> f64 {
        self.inner.colony.observe(self.load())
    }

    pub fn band(&self) -> Band {
        self.inner.colony.band(self.temperature())
    }

    /// Hot and critical nodes leave swarm tasks to others.
    pub fn accepts_swarm_tasks(&self) -> bool {
        self.band() < Band::Hot
    }

    /// A critical node stops acking MQTT: the broker keeps the messages until it cools.
    pub fn acks_ingest(&self) -> bool {
        self.band() < Band::Critical
    }

    pub fn colony_status(&self) -> ColonyStatus {
        self.inner.colony.status(self.load())
    }

    pub fn bee_status(&self) -> Vec<BeeStatus> {
        self.inner
            .bees
            .iter()
            .map(|b| {
                let used = b.memory.reserved() as u64;
                let busy = b.busy.load(Ordering::SeqCst);
                BeeStatus {
                    bee_id: format!("bee-{}", b.id),
                    state: if busy { BeeState::Busy } else { BeeState::Idle },
                    task: b.task.lock().expect("bee lock").clone(),
                    memory_used: used,
                    memory_budget: b.budget,
                    memory_used_mb: mb(used),
                    memory_budget_mb: mb(b.budget),
                }
            })
            .collect()
    }

    fn busy_error(&self, why: String) -> Error {
        Error::busy(why, self.inner.colony.retry_after().as_millis() as u64)
    }

    /// Run `task` in a chamber: wait for a free bee (in the bounded queue), run with the
    /// bee's runtime until the deadline, then clean the bee's scratch dir.
    pub async fn run<T>(
        &self,
        label: &str,
        task: impl AsyncFnOnce(&Chamber<'_>) -> Result<T>,
    ) -> Result<T> {
        let inner = &self.inner;
        let t = self.temperature();
        if inner.colony.band(t) == Band::Critical {
            return Err(self.busy_error(format!(
                "node is critical (temperature {t:.2}): not taking new work"
            )));
        }
        let permit = match inner.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                let ahead = inner.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Decrement(&inner.waiting);
                if ahead >= inner.queue_limit {
                    return Err(self.busy_error(format!(
                        "all {} bees are busy and {} tasks are queued",
                        inner.bees.len(),
                        ahead
                    )));
                }
                self.temperature();
                inner
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| Error::internal("bee pool closed"))?
            }
        };
        let idx = inner
            .free
            .lock()
            .expect("pool lock")
            .pop()
            .ok_or_else(|| Error::internal("a permit without a free bee"))?;
        let bee = &inner.bees[idx];
        *bee.task.lock().expect("bee lock") = Some(label.chars().take(200).collect());
        bee.busy.store(true, Ordering::SeqCst);
        let _release = Release {
            inner,
            idx,
            _permit: permit,
        };
        self.temperature();
        let chamber = Chamber {
            bee,
            deadline: Instant::now() + inner.task_timeout,
        };
        let result = match tokio::time::timeout(inner.task_timeout, task(&chamber)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "task ran past its deadline of {} (bees.task_timeout) and was cancelled",
                    human_duration(inner.task_timeout)
                ),
            )),
        };
        result.map_err(|e| {
            if e.kind == ErrorKind::ResourcesExhausted {
                e.context(format!(
                    "{} ran out of its memory budget of {} MiB (raise bees.memory_per_bee / APIARY_MEMORY_PER_BEE, or narrow the query)",
                    chamber.bee_id(),
                    chamber.budget() / MIB
                ))
            } else {
                e
            }
        })
    }
}

/// Decrements the waiting count when a queued caller leaves (served, refused or dropped).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Returns a bee to the pool (also when its task is cancelled) with a clean scratch dir,
/// then its permit: a waiter woken by the permit must find the bee free.
struct Release<'a> {
    inner: &'a Inner,
    idx: usize,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let bee = &self.inner.bees[self.idx];
        sweep_scratch(bee);
        *bee.task.lock().expect("bee lock") = None;
        bee.busy.store(false, Ordering::SeqCst);
        self.inner.free.lock().expect("pool lock").push(self.idx);
    }
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / MIB as f64 * 100.0).round() / 100.0
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Empty a bee's scratch dir after a task. DataFusion's spill files (in its own
/// sub-directory) delete themselves when dropped, so that one is walked only when the disk
/// manager still counts bytes in use (a spill cut short); anything else is always removed.
fn sweep_scratch(bee: &Bee) {
    let Ok(entries) = std::fs::read_dir(&bee.scratch) else {
        return;
    };
    let spill_in_use = bee.env.disk_manager.used_disk_space() > 0;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if spill_in_use {
                remove_files(&entry.path());
            }
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Delete the files below `dir`, keeping the directories (DataFusion owns a sub-directory
/// there for the life of the runtime).
fn remove_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_files(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Scratch dirs are named by process id; remove those whose process is gone.
fn remove_stale_scratch(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Files currently below `dir` (tests and status use it to see spills).
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BeesConfig;

    fn pool(bees: usize, queue: usize, timeout: Duration) -> (BeePool, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let r = Resources::from_parts(
            &BeesConfig {
                count: Some(bees),
                ..Default::default()
            },
            bees,
            1 << 30,
        );
        let cfg = PoolConfig {
            task_timeout: timeout,
            queue_limit: Some(queue),
            ..Default::default()
        };
        (BeePool::new(&r, cfg, dir.path()).unwrap(), dir)
    }

    #[tokio::test]
    async fn one_task_per_bee_then_a_bounded_queue_then_busy() {
        let (p, _d) = pool(2, 1, Duration::from_secs(30));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let hold = |p: BeePool, mut rx: tokio::sync::watch::Receiver<bool>| async move {
            p.run("hold", async |_c| {
                rx.wait_for(|v| *v).await.unwrap();
                Ok(())
            })
            .await
        };
        let a = tokio::spawn(hold(p.clone(), rx.clone()));
        let b = tokio::spawn(hold(p.clone(), rx.clone()));
        let c = tokio::spawn(hold(p.clone(), rx.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(p.waiting() == 1 && p.bee_status().iter().all(|b| b.state == BeeState::Busy)) {
            assert!(
                Instant::now() < deadline,
                "two busy bees and one queued task"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = p.run("extra", async |_c| Ok(())).await.unwrap_err();
        assert!(e.kind.is_busy(), "{e}");
        assert!(
            e.retry_after_ms().is_some() && e.message.contains("queued"),
            "{e}"
        );
        tx.send(true).unwrap();
        for h in [a, b, c] {
            h.await.unwrap().unwrap();
        }
        assert_eq!(p.waiting(), 0);
        assert!(
            p.bee_status()
                .iter()
                .all(|b| b.state == BeeState::Idle && b.task.is_none())
        );
    }

    #[tokio::test]
    async fn a_task_past_its_deadline_is_cancelled_and_its_bee_freed() {
        let (p, _d) = pool(1, 1, Duration::from_millis(100));
        let e = p
            .run("sleepy", async |_c| {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(e.message.contains("100 ms"), "{e}");
        assert_eq!(p.bee_status()[0].state, BeeState::Idle);
        p.run("next", async |_c| Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn scratch_is_cleaned_after_each_task() {
        let (p, _d) = pool(1, 1, Duration::from_secs(5));
        let dir = p
            .run("spill", async |c| {
                std::fs::write(c.scratch().join("leftover"), b"x").unwrap();
                Ok(c.scratch().to_path_buf())
            })
            .await
            .unwrap();
        assert_eq!(count_files(&dir), 0);
    }

    /// Queued tasks take over bees as others finish: none finds its permit without a bee.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queued_tasks_always_find_a_free_bee() {
        let (p, _d) = pool(2, 64, Duration::from_secs(30));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.run(&format!("t{i}"), async |_c| {
                    tokio::task::yield_now().await;
                    Ok(i)
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i);
        }
        assert!(p.bee_status().iter().all(|b| b.state == BeeState::Idle));
    }
}

//! Bees: one worker slot per core, each with a memory budget enforced by its chamber. This
//! module sizes them from the machine (cgroup limit or physical memory), derives the
//! leafcutter cell size, and holds the pool and the colony model.

pub mod colony;
mod pool;

pub use colony::{Band, Colony, ColonyConfig, ColonyStatus, Load, Verdict};
pub use pool::{BeePool, BeeStatus, Chamber, PoolConfig, count_files};

use crate::config::BeesConfig;

const MIB: u64 = 1 << 20;

/// Make freed memory go back to the system: glibc otherwise keeps large freed blocks in
/// per-thread arenas (and raises its mmap threshold after each big free), so a node's RSS
/// would stay at its peak after one big query or UDF batch. On a 1 GiB board the peak must
/// be temporary. Called once at process start (the binary, the Python module).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before the runtime starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// What this node has to work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cores: usize,
    /// Memory the node may see: the cgroup limit when there is one, else physical memory.
    pub memory_bytes: u64,
    pub bees: usize,
    pub memory_per_bee: u64,
}

impl Resources {
    pub fn detect(config: &BeesConfig) -> Resources {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::from_parts(config, cores, machine_memory())
    }

    pub fn from_parts(config: &BeesConfig, cores: usize, memory_bytes: u64) -> Resources {
        let bees = config.count.unwrap_or(cores).max(1);
        let usable = (memory_bytes as f64 * config.usable_fraction) as u64;
        let memory_per_bee = config
            .memory_per_bee
            .map(|b| b.0)
            .unwrap_or(usable / bees as u64)
            .max(MIB);
        Resources {
            cores,
            memory_bytes,
            bees,
            memory_per_bee,
        }
    }

    pub fn target_cell_size(&self) -> u64 {
        target_cell_size(self.memory_per_bee)
    }
}

/// Leafcutter sizing: a cell is small enough that any bee can process it inside its budget.
pub fn target_cell_size(memory_per_bee: u64) -> u64 {
    (memory_per_bee / 4).clamp(8 * MIB, 256 * MIB)
}

/// The smaller of the cgroup (v2 or v1) memory limit and physical memory.
fn machine_memory() -> u64 {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(1 << 30);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    cgroup.map_or(physical, |c| c.min(physical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    #[test]
    fn budgets_come_from_memory_and_cores() {
        let c = BeesConfig::default();
        let r = Resources::from_parts(&c, 4, 1 << 30);
        assert_eq!(r.bees, 4);
        assert_eq!(r.memory_per_bee, ((1u64 << 30) as f64 * 0.7) as u64 / 4);
        let c = BeesConfig {
            count: Some(2),
            memory_per_bee: Some(ByteSize(64 * MIB)),
            ..Default::default()
        };
        let r = Resources::from_parts(&c, 4, 1 << 30);
        assert_eq!((r.bees, r.memory_per_bee), (2, 64 * MIB));
    }

    #[test]
    fn leafcutter_clamps() {
        assert_eq!(target_cell_size(MIB), 8 * MIB);
        assert_eq!(target_cell_size(100 * MIB), 25 * MIB);
        assert_eq!(target_cell_size(64 << 30), 256 * MIB);
    }
}

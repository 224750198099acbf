//! Bees: one worker slot per core, each with a memory budget enforced by its chamber. This
//! module sizes them from the machine (cgroup limit or physical memory), derives the
//! leafcutter cell size, and holds the pool and the colony model.

pub(crate) mod colony;
mod pool;

pub use colony::{Band, Colony, ColonyStatus, Load, Verdict};
pub use pool::{BeePool, BeeState, BeeStatus, Chamber, PoolConfig, count_files};

use std::path::{Path, PathBuf};

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
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_memory_limit(&c, Path::new("/sys/fs/cgroup")));
    cgroup.map_or(physical, |c| c.min(physical))
}

/// The tightest memory limit on this process's cgroup and its ancestors (a systemd unit's
/// `MemoryMax=` sits on its own cgroup, not on the root): v2 `memory.max`, else v1
/// `memory.limit_in_bytes`. `proc_cgroup` is /proc/self/cgroup, `root` the cgroup mount.
fn cgroup_memory_limit(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let tightest = |base: PathBuf, path: &str, file: &str| {
        base.join(path.trim_start_matches('/'))
            .ancestors()
            .take_while(|d| d.starts_with(&base))
            .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .filter_map(|s| s.trim().parse::<u64>().ok())
            .min()
    };
    let v2 = || {
        let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        tightest(root.to_path_buf(), path, "memory.max")
    };
    let v1 = || {
        proc_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })
    };
    v2().or_else(|| tightest(root.join("memory"), v1()?, "memory.limit_in_bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    #[test]
    fn the_cgroup_limit_is_the_tightest_on_the_way_up() {
        let root = tempfile::tempdir().unwrap();
        let unit = root.path().join("system.slice/apiary.service");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(root.path().join("system.slice/memory.max"), "max\n").unwrap();
        std::fs::write(unit.join("memory.max"), "805306368\n").unwrap();
        let own = "0::/system.slice/apiary.service\n";
        assert_eq!(cgroup_memory_limit(own, root.path()), Some(768 << 20));
        std::fs::write(root.path().join("system.slice/memory.max"), "536870912\n").unwrap();
        assert_eq!(cgroup_memory_limit(own, root.path()), Some(512 << 20));
        assert_eq!(cgroup_memory_limit("0::/\n", root.path()), None);
        // cgroup v1: the memory controller's own hierarchy.
        let v1 = root.path().join("memory/box");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "268435456\n").unwrap();
        let v1_own = "5:cpu,cpuacct:/box\n4:memory:/box\n";
        assert_eq!(cgroup_memory_limit(v1_own, root.path()), Some(256 << 20));
        assert_eq!(cgroup_memory_limit("", root.path()), None);
    }

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

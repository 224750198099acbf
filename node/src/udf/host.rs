//! The wasmtime side: one engine per node sized for small boards, a WASI with nothing in it
//! (no files, network, environment or clock), compiled components cached on disk, and per
//! store limits: linear memory reserved from the bee's memory pool, time by epochs.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView};

use crate::error::{Error, Result};

wasmtime::component::bindgen!({
    world: "scalar",
    path: "../udf-sdk/wit",
});

pub use self::apiary::udf::types::{DataType as WitType, Utf8Values, Values};

/// How often the epoch advances: the resolution of UDF time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// What a guest may print (a panic message) before its writes trap.
const STDERR_CAPACITY: usize = 16 * 1024;
/// Tables hold function references; real UDFs need a handful.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What one instance's store carries.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limits,
    pub stderr: MemoryOutputPipe,
}

impl wasmtime_wasi::WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linear memory comes out of the bee's memory pool, so a UDF shares its chamber's budget.
pub struct Limits {
    reservation: MemoryReservation,
    /// The size a refused `memory.grow` asked for.
    pub denied: Option<usize>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.reservation.try_grow(desired.saturating_sub(current)) {
            Ok(()) => Ok(true),
            Err(_) => {
                self.denied = Some(desired);
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Clocks that always say the same thing: UDFs get no time source.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The node's wasmtime engine, linker and compiled components.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    cache_dir: PathBuf,
    /// Engine settings a cached artifact must have been compiled with.
    compat: String,
    prepared: Mutex<HashMap<String, ScalarPre<GuestState>>>,
}

impl Runtime {
    pub fn new(cache_dir: &Path) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // A 1 GiB board cannot reserve 4 GiB + guards per instance: reserve a little
            // address space, let memories move when they grow, keep guards small.
            .memory_reservation(16 << 20)
            .memory_reservation_for_growth(16 << 20)
            .memory_guard_size(64 << 10)
            .memory_may_move(true)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| Error::internal(format!("wasmtime: {e}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("udf-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the UDF epoch thread: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::internal(format!("wasmtime linker: {e}")))?;
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        std::fs::create_dir_all(cache_dir).map_err(|e| {
            Error::storage(format!(
                "cannot create the UDF cache {}: {e}",
                cache_dir.display()
            ))
        })?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            compat: format!("{:016x}", h.finish()),
            prepared: Mutex::new(HashMap::new()),
        })
    }

    /// An already prepared component, without touching disk or the meadow.
    pub fn cached(&self, sha256: &str) -> Option<ScalarPre<GuestState>> {
        self.prepared
            .lock()
            .expect("udf cache")
            .get(sha256)
            .cloned()
    }

    /// Compile (or load from the disk cache) and link a component. Slow: call it off the
    /// async threads.
    pub fn prepare(&self, sha256: &str, wasm: Option<&[u8]>) -> Result<ScalarPre<GuestState>> {
        if let Some(pre) = self.cached(sha256) {
            return Ok(pre);
        }
        let component = self.load(sha256, wasm)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| {
                Error::invalid(format!(
                    "the component needs imports Apiary does not provide (only a sandboxed WASI without files, network, environment or clocks): {}",
                    root_message(&e)
                ))
            })
            .and_then(|pre| {
                ScalarPre::new(pre).map_err(|e| {
                    Error::invalid(format!(
                        "the component does not implement the apiary:udf/scalar world (exports describe and invoke, from udf-sdk/wit): {}",
                        root_message(&e)
                    ))
                })
            })?;
        self.prepared
            .lock()
            .expect("udf cache")
            .insert(sha256.to_string(), pre.clone());
        Ok(pre)
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{sha256}-{}.cwasm", self.compat))
    }

    /// Whether the disk cache has this component compiled for this engine.
    pub fn on_disk(&self, sha256: &str) -> bool {
        self.cache_path(sha256).exists()
    }

    fn load(&self, sha256: &str, wasm: Option<&[u8]>) -> Result<Component> {
        let path = self.cache_path(sha256);
        if path.exists() {
            // SAFETY: the file is one this node compiled and wrote into its own state dir;
            // wasmtime checks that it matches this engine's settings.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "recompiling a stale UDF cache entry")
                }
            }
        }
        let Some(wasm) = wasm else {
            return Err(Error::internal(format!(
                "component {sha256} is neither prepared nor given"
            )));
        };
        check_header(wasm)?;
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            Error::invalid(format!(
                "not a valid WebAssembly component: {}",
                root_message(&e)
            ))
        })?;
        match component.serialize() {
            Ok(bytes) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if let Err(e) =
                    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot cache a compiled UDF");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise a compiled UDF"),
        }
        Ok(component)
    }

    /// A store whose linear memory is reserved from `memory`.
    pub fn store(&self, name: &str, memory: &Arc<dyn MemoryPool>) -> Store<GuestState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(Frozen)
            .monotonic_clock(Frozen)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = Limits {
            reservation: MemoryConsumer::new(format!("udf {name}")).register(memory),
            denied: None,
        };
        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi,
                table: ResourceTable::new(),
                limits,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }

    /// Arm the time limit for the next call: `until` from now, in epoch ticks.
    pub fn arm(store: &mut Store<GuestState>, until: Instant) {
        let left = until.saturating_duration_since(Instant::now());
        let ticks = left.as_millis() / EPOCH_TICK.as_millis();
        store.set_epoch_deadline((ticks as u64).max(1));
    }
}

/// Tell a core module or random bytes from a component before wasmtime's longer messages.
pub fn check_header(wasm: &[u8]) -> Result<()> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(Error::invalid(
            "not WebAssembly: a UDF is a .wasm component (cargo build --target wasm32-wasip2 --release)",
        ));
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(Error::invalid(
            "a core WebAssembly module, not a component: build the UDF with --target wasm32-wasip2 (or wrap the module with `wasm-tools component new`)",
        ));
    }
    Ok(())
}

/// wasmtime errors carry context chains; the innermost cause is the informative part.
pub fn root_message(e: &wasmtime::Error) -> String {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    chain.join(": ")
}

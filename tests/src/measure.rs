//! Measuring helpers shared by the benchmark binaries (`sluice-bench`, `sluice-edge-bench`): the
//! raw `fdatasync` reference of a disk, a [`Disk`] that counts syncs and written bytes, latency
//! percentiles, the CPU time of the process and of the machine, the load average, and their
//! common `main` ([`bench_main`]).
//!
//! These read the OS clock through [`RealClock`] and `/proc`; nothing here asserts a target.

use anyhow::{Context, Result};
use sluice_proto::env::{Clock, Disk, DiskError, DiskFile};
use sluice_proto::os::{FsDisk, RealClock};
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `main` of a benchmark binary: the node's and agent's log to stderr (`SLUICE_LOG=info` for
/// more; default warnings), `run` on a multi-thread runtime, and its error (printed) as a
/// failing exit status.
pub fn bench_main(run: impl Future<Output = Result<()>>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// The percentiles of `micros` (zeros when empty).
pub fn percentiles(mut micros: Vec<u64>) -> Percentiles {
    micros.sort_unstable();
    let at = |p: f64| -> u64 {
        if micros.is_empty() {
            return 0;
        }
        let idx = ((micros.len() as f64 - 1.0) * p).round() as usize;
        micros[idx.min(micros.len() - 1)]
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: micros.last().copied().unwrap_or(0),
    }
}

/// Microseconds as milliseconds with two decimals, for printing.
pub fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// The raw sync rate of the disk holding `dir`: 4 KiB `pwrite` + `fdatasync` in a loop on a
/// preallocated 64 MiB file in `dir`, for `seconds`. Returns syncs per second and latencies.
pub fn fsync_reference(dir: &Path, seconds: u64) -> Result<(f64, Percentiles)> {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 64 << 20;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, SIZE).is_err() {
        // No fallocate here: write the zeros instead, so blocks are allocated either way.
        let zeros = vec![0u8; 1 << 20];
        for i in 0..SIZE / (1 << 20) {
            file.write_all_at(&zeros, i << 20)?;
        }
    }
    file.sync_all()?;
    let clock = RealClock;
    let block = [0x5au8; 4096];
    let start = clock.now();
    let end = start + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    let mut pos = 0u64;
    while clock.now() < end && latencies.len() < 10_000_000 {
        let t = clock.now();
        file.write_all_at(&block, pos)?;
        file.sync_data()?;
        latencies.push(clock.now().duration_since(t).as_micros() as u64);
        pos = (pos + 4096) % SIZE;
    }
    let rate = latencies.len() as f64 / clock.now().duration_since(start).as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok((rate, percentiles(latencies)))
}

/// What a [`CountingDisk`] has seen.
#[derive(Debug, Default)]
pub struct DiskCounters {
    /// `fdatasync` calls on files (directory syncs are not counted).
    pub n_syncs: AtomicU64,
    /// Bytes passed to `write_at`.
    pub bytes_written: AtomicU64,
}

impl DiskCounters {
    /// `(n_syncs, bytes_written)` now.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.n_syncs.load(Ordering::Relaxed),
            self.bytes_written.load(Ordering::Relaxed),
        )
    }
}

/// The local filesystem ([`FsDisk`]), counting `fdatasync` calls and written bytes.
#[derive(Debug, Default)]
pub struct CountingDisk {
    inner: FsDisk,
    counters: Arc<DiskCounters>,
}

impl CountingDisk {
    /// A counting disk and its counters.
    pub fn new() -> (CountingDisk, Arc<DiskCounters>) {
        let disk = CountingDisk::default();
        let counters = disk.counters.clone();
        (disk, counters)
    }
}

struct CountingFile {
    inner: Arc<dyn DiskFile>,
    counters: Arc<DiskCounters>,
}

impl DiskFile for CountingFile {
    fn size(&self) -> Result<u64, DiskError> {
        self.inner.size()
    }
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        self.inner.read_at(pos, buf)
    }
    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        self.counters
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.write_at(pos, data)
    }
    fn allocate(&self, len: u64) -> Result<(), DiskError> {
        self.inner.allocate(len)
    }
    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        self.inner.truncate(len)
    }
    fn sync_data(&self) -> Result<(), DiskError> {
        self.counters.n_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
}

impl Disk for CountingDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
        let inner = self.inner.open(path, create)?;
        Ok(Arc::new(CountingFile {
            inner,
            counters: self.counters.clone(),
        }))
    }
    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.sync_dir(dir)
    }
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (Linux,
/// 100 clock ticks per second); `None` where that is not readable.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds every process of the machine has used so far: the non-idle time of all CPUs in
/// `/proc/stat` (user, nice, system, irq, softirq, steal; 100 ticks per second).
pub fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|i| ticks.get(*i).copied().unwrap_or(0))
        .sum();
    Some(busy as f64 / 100.0)
}

/// CPU time of this process and of the whole machine at one moment, to tell how much of the
/// machine other processes (neighbours on a shared machine, a child) used during a measurement.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    process: Option<f64>,
    machine: Option<f64>,
}

impl CpuSnapshot {
    /// Reads both now.
    pub fn take() -> CpuSnapshot {
        CpuSnapshot {
            process: process_cpu_seconds(),
            machine: machine_cpu_seconds(),
        }
    }

    /// CPU seconds used since `earlier`: `(this process, every other process)`.
    pub fn since(&self, earlier: &CpuSnapshot) -> (Option<f64>, Option<f64>) {
        let process = self.process.zip(earlier.process).map(|(a, b)| a - b);
        let machine = self.machine.zip(earlier.machine).map(|(a, b)| a - b);
        let others = machine.zip(process).map(|(m, p)| (m - p).max(0.0));
        (process, others)
    }
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg`, as printed there.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Logical CPUs available to this process (0 if unknown).
pub fn n_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

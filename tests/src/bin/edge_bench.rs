//! `sluice-edge-bench`: the edge agent's spool append rate on a real disk, against the raw
//! `fdatasync` rate of the same disk, and the resident memory of the real `sluice-edge` binary
//! with 10 sensors at 1 Hz.
//!
//! ```text
//! cargo run --release -p sluice-tests --bin sluice-edge-bench -- [--dir PATH] [--seconds S]
//!     [--sync-interval-ms 0,100,1000] [--rss-seconds S] [--fsync-seconds S]
//! ```
//!
//! The run:
//!
//! 1. the reference: 4 KiB `pwrite` + `fdatasync` in a loop on a preallocated file in a temp dir
//!    inside `--dir` (default: the system temp dir), as `sluice-bench` does;
//! 2. for each `--sync-interval-ms`: a fresh `Spool` (default config but for the sync interval) on
//!    the real disk in that temp dir, fed temperature readings of 10 sensors as fast as one
//!    thread can for `--seconds`, with an online uplink simulated the way the agent runs it:
//!    every 100 appends it takes `next_batch`es (500 records, 256 KiB, the uplink defaults) until
//!    none is left and acknowledges each sensor's highest seq, and it runs `handle_timeout` when
//!    `poll_timeout` is due. Reports appends/s, the spool's `fdatasync`s/s (`stats().n_syncs`),
//!    bytes per record, the latency of one append step and the ratios to the reference;
//! 3. the agent's memory: an in-process node, and `sluice-edge run` (the binary of this build's
//!    profile, so run with `--release`) as a child with a `sim` source of 10 devices x 1 quantity
//!    every 1000 ms; `VmRSS` and `VmHWM` of the child are read from `/proc/<pid>/status` every
//!    second for `--rss-seconds` (0 skips this part), then its status (delivered count) and where
//!    its resident memory sits (`/proc/<pid>/smaps`).
//!
//! Nothing here asserts a target; BENCHMARKS.md records the figures.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use sluice_edge::spool::{Now, Spool, SpoolConfig, StreamKey};
use sluice_proto::env::Clock;
use sluice_proto::os::RealClock;
use sluice_proto::{Payload, Reading, SensorId};
use sluice_tests::edge::{sim_source, TestEdge};
use sluice_tests::measure::{
    fsync_reference, load_average, ms, n_cpus, percentiles, pid_cpu_seconds, CountingDisk,
    CpuSnapshot, Percentiles,
};
use sluice_tests::{within, TestNode, STEP};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-edge-bench",
    about = "Spool append rate and agent memory of the edge agent"
)]
struct Args {
    /// Directory the temp dir of the reference and the spools is created in: put it on the disk
    /// to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per spool run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The spool's `sync_interval_ms` values to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 100, 1000])]
    sync_interval_ms: Vec<u64>,
    /// Seconds of the agent memory run (0 skips it).
    #[arg(long, default_value_t = 60)]
    rss_seconds: u64,
    /// Seconds of the raw fdatasync reference.
    #[arg(long, default_value_t = 3)]
    fsync_seconds: u64,
}

/// Sensors fed in the spool runs, like the 10 sensors of the memory run.
const N_SENSORS: usize = 10;
/// Appends between two uplink rounds (the agent takes batches as soon as records are durable;
/// this is the cadence the issue asks for).
const APPENDS_PER_ROUND: u64 = 100;
/// The uplink's default `batch_records_max` and `batch_bytes_max` (edge config defaults).
const BATCH_RECORDS_MAX: u32 = 500;
const BATCH_BYTES_MAX: u64 = 256 << 10;
/// Bound on the batches one uplink round takes (a round normally empties the spool in one or two).
const BATCHES_PER_ROUND_MAX: u32 = 10_000;
/// Bound on the appends of one spool run, whatever the clock says.
const APPENDS_MAX: u64 = 100_000_000;
/// Bound on finding or building the `sluice-edge` binary.
const BUILD_MAX: Duration = Duration::from_secs(1800);

/// What one spool run measured.
struct SpoolRun {
    sync_interval_ms: u64,
    n_appended: u64,
    n_rejected: u64,
    n_delivered: u64,
    elapsed: Duration,
    /// `fdatasync`s of the spool's log (`SpoolStats::n_syncs`).
    n_syncs: u64,
    /// `fdatasync`s of files on the disk (adds the syncs of segment creation).
    n_disk_syncs: u64,
    bytes_written: u64,
    /// Bytes of one reading's frame: live bytes over records waiting, at the last uplink round
    /// that found records waiting.
    frame_bytes: Option<f64>,
    n_segments_removed: u64,
    latency: Percentiles,
    cpu_seconds: Option<f64>,
    /// CPU seconds every other process of the machine used during the run.
    other_cpu_seconds: Option<f64>,
}

impl SpoolRun {
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

fn sensors() -> Result<Vec<SensorId>> {
    (0..N_SENSORS)
        .map(|i| Ok(SensorId::new(format!("bench-{i}/temperature"))?))
        .collect()
}

/// Takes every durable record the spool hands out and acknowledges each sensor's highest seq,
/// as the uplink does when the node answers; returns the records delivered.
fn deliver(spool: &mut Spool, now: Now) -> Result<u64> {
    let mut n = 0u64;
    for _ in 0..BATCHES_PER_ROUND_MAX {
        let records = spool.next_batch(BATCH_RECORDS_MAX, BATCH_BYTES_MAX)?;
        if records.is_empty() {
            return Ok(n);
        }
        let mut through: BTreeMap<StreamKey, u64> = BTreeMap::new();
        for record in &records {
            let key = StreamKey {
                sensor: record.sensor.clone(),
                epoch: record.boot_epoch,
            };
            let seq = through.entry(key).or_insert(0);
            *seq = (*seq).max(record.seq_last());
        }
        for (key, seq_through) in &through {
            spool.ack(now, key, *seq_through)?;
        }
        n += records.len() as u64;
    }
    Ok(n)
}

/// One spool run in a fresh directory under `parent`.
fn spool_run(parent: &Path, sync_interval_ms: u64, seconds: u64) -> Result<SpoolRun> {
    let dir = tempfile::Builder::new()
        .prefix("spool-")
        .tempdir_in(parent)
        .context("creating the spool's temp dir")?;
    let (disk, counters) = CountingDisk::new();
    let config = SpoolConfig {
        sync_interval_ms,
        ..SpoolConfig::default()
    };
    let clock = RealClock;
    let at = |clock: &RealClock| Now {
        mono: clock.now(),
        wall: clock.wall(),
    };
    let (mut spool, _) = Spool::open(Arc::new(disk), dir.path(), config, at(&clock))?;
    let sensors = sensors()?;
    let stats_before = spool.stats();
    let (disk_syncs_before, bytes_before) = counters.snapshot();
    let cpu_before = CpuSnapshot::take();
    let mut latencies = Vec::new();
    let (mut n_appended, mut n_rejected, mut n_delivered) = (0u64, 0u64, 0u64);
    let start = clock.now();
    let end = start + Duration::from_secs(seconds);
    let mut n_steps = 0u64;
    let mut frame_bytes = None;
    while n_steps < APPENDS_MAX {
        let t = clock.now();
        if t >= end {
            break;
        }
        let now = at(&clock);
        if spool.poll_timeout().is_some_and(|due| due <= now.mono) {
            spool.handle_timeout(now)?;
        }
        let sensor = sensors[(n_steps % N_SENSORS as u64) as usize].clone();
        let celsius = 20.0 + (n_steps % 50) as f64 * 0.1;
        let reading = Payload::Reading(Reading::Temperature { celsius });
        match spool.append(now, sensor, now.wall, reading)? {
            Ok(_) => n_appended += 1,
            Err(_) => n_rejected += 1,
        }
        latencies.push(clock.now().duration_since(t).as_micros() as u64);
        n_steps += 1;
        if n_steps % APPENDS_PER_ROUND == 0 {
            let core = spool.core();
            if core.n_records() > 0 {
                frame_bytes = Some(core.live_bytes() as f64 / core.n_records() as f64);
            }
            n_delivered += deliver(&mut spool, now)?;
        }
    }
    let elapsed = clock.now().duration_since(start);
    let (cpu_seconds, other_cpu_seconds) = CpuSnapshot::take().since(&cpu_before);
    let stats = spool.stats();
    let (disk_syncs, bytes) = counters.snapshot();
    spool.close(at(&clock))?;
    Ok(SpoolRun {
        sync_interval_ms,
        n_appended,
        n_rejected,
        n_delivered,
        elapsed,
        n_syncs: stats.n_syncs - stats_before.n_syncs,
        n_disk_syncs: disk_syncs - disk_syncs_before,
        bytes_written: bytes - bytes_before,
        frame_bytes,
        n_segments_removed: stats.n_segments_removed - stats_before.n_segments_removed,
        latency: percentiles(latencies),
        cpu_seconds,
        other_cpu_seconds,
    })
}

fn print_spool_run(r: &SpoolRun, fsync_rate: f64) {
    let appends_per_s = r.per_s(r.n_appended);
    println!("spool, sync_interval_ms = {}:", r.sync_interval_ms);
    println!(
        "  {appends_per_s:.0} appends/s ({} appends in {:.1} s; {} refused); {:.2} appends/s per reference fdatasync/s",
        r.n_appended,
        r.elapsed.as_secs_f64(),
        r.n_rejected,
        appends_per_s / fsync_rate
    );
    println!(
        "  fdatasync: {:.0} /s by the spool ({:.1}% of the reference rate, {:.1} appends per sync); {:.0} /s on the disk with segment creation",
        r.per_s(r.n_syncs),
        100.0 * r.per_s(r.n_syncs) / fsync_rate,
        r.n_appended as f64 / r.n_syncs.max(1) as f64,
        r.per_s(r.n_disk_syncs)
    );
    println!(
        "  bytes: {} per reading frame; {:.1} written per append (readings, reservations, acks, send marks, relocations); {} segments freed",
        r.frame_bytes
            .map_or("-".to_owned(), |b| format!("{b:.1}")),
        r.bytes_written as f64 / r.n_appended.max(1) as f64,
        r.n_segments_removed
    );
    println!(
        "  one step (timeout check + append): p50 {}  p99 {}  p99.9 {}  max {}",
        ms(r.latency.p50),
        ms(r.latency.p99),
        ms(r.latency.p999),
        ms(r.latency.max)
    );
    if let Some(cpu) = r.cpu_seconds {
        println!(
            "  delivered (acknowledged) {}; process cpu {:.2} cores busy, {:.2} us cpu per append",
            r.n_delivered,
            cpu / r.elapsed.as_secs_f64(),
            1e6 * cpu / r.n_appended.max(1) as f64
        );
    }
    if let Some(others) = r.other_cpu_seconds {
        println!(
            "  other processes of the machine: {:.2} cores busy",
            others / r.elapsed.as_secs_f64()
        );
    }
}

/// The reference and every spool run, in one temp dir under `--dir`.
fn spool_part(args: &Args) -> Result<()> {
    let dir = match &args.dir {
        Some(parent) => tempfile::Builder::new()
            .prefix("sluice-edge-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new()
            .prefix("sluice-edge-bench-")
            .tempdir(),
    }
    .context("creating the bench's temp dir")?;
    println!(
        "sluice-edge-bench: spools in {} ({} cpus, load average {})",
        dir.path().display(),
        n_cpus(),
        load_average()
    );
    let (fsync_rate, fsync_latency) = fsync_reference(dir.path(), args.fsync_seconds)?;
    println!(
        "reference: 4 KiB pwrite + fdatasync: {fsync_rate:.0} /s  (p50 {}, p99 {}, p99.9 {})",
        ms(fsync_latency.p50),
        ms(fsync_latency.p99),
        ms(fsync_latency.p999)
    );
    for sync_interval_ms in &args.sync_interval_ms {
        let run = spool_run(dir.path(), *sync_interval_ms, args.seconds)?;
        print_spool_run(&run, fsync_rate);
    }
    println!("load average after the spool runs: {}", load_average());
    Ok(())
}

/// Memory figures of a process, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
struct MemSample {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    n_threads: u64,
}

fn mem_sample(pid: u32) -> Result<MemSample> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut sample = MemSample::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || -> u64 {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => sample.rss_kib = number(),
            "VmHWM" => sample.hwm_kib = number(),
            "RssAnon" => sample.anon_kib = number(),
            "RssFile" => sample.file_kib = number(),
            "Threads" => sample.n_threads = number(),
            _ => {}
        }
    }
    if sample.rss_kib == 0 {
        bail!("{path} has no VmRSS");
    }
    Ok(sample)
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// Resident KiB of each mapping of `pid` (from `/proc/<pid>/smaps`), largest first, with the
/// mapping's size in KiB and its name (`[anon]` when it has none).
fn mappings(pid: u32) -> Result<Vec<(u64, u64, String)>> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: range, perms, offset, dev, inode, [name].
            let name: Vec<&str> = words.skip(4).collect();
            let name = if name.is_empty() {
                "[anon]".to_owned()
            } else {
                name.join(" ")
            };
            out.push((0, 0, name));
        } else if let Some(last) = out.last_mut() {
            let value = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Size:" => last.1 = value,
                "Rss:" => last.0 = value,
                _ => {}
            }
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.0));
    Ok(out)
}

/// Prints where the resident memory of `pid` sits: by kind of mapping, and the largest ones.
fn print_mappings(pid: u32) -> Result<()> {
    let maps = mappings(pid)?;
    let mut by_kind: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (rss, size, name) in &maps {
        let kind = if name.starts_with('/') {
            let file = Path::new(name)
                .file_name()
                .map_or(name.clone(), |f| f.to_string_lossy().into_owned());
            format!("file {file}")
        } else {
            name.clone()
        };
        let entry = by_kind.entry(kind).or_default();
        entry.0 += rss;
        entry.1 += size;
        entry.2 += 1;
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1 .0));
    println!("  resident memory by mapping kind (rss / mapped, mappings):");
    for (kind, (rss, size, n)) in kinds.iter().filter(|(_, (rss, _, _))| *rss > 0) {
        println!(
            "    {kind:<32} {:>10} / {:>11}  ({n})",
            mib(*rss),
            mib(*size)
        );
    }
    println!("  largest resident mappings:");
    for (rss, size, name) in maps.iter().take(8) {
        println!("    {:>10} of {:>11}  {name}", mib(*rss), mib(*size));
    }
    Ok(())
}

/// The agent's sources for the memory run: 10 sensors at 1 Hz.
fn rss_sources() -> String {
    sim_source("room", 10, 1000)
        .temperature_only()
        .no_dropouts()
        .to_string()
}

/// Samples the agent's memory once a second for `seconds`; returns every sample.
async fn sample_memory(edge: &TestEdge, pid: u32, seconds: u64) -> Result<Vec<MemSample>> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for second in 0..=seconds {
        ticks.tick().await;
        let sample = mem_sample(pid)?;
        if second % 10 == 0 {
            let delivered = edge.status().await.map(|s| s.uplink.delivered).ok();
            println!(
                "  t={second:>3} s  VmRSS {}  VmHWM {}  (anon {}, file {}), {} threads, delivered {}",
                mib(sample.rss_kib),
                mib(sample.hwm_kib),
                mib(sample.anon_kib),
                mib(sample.file_kib),
                sample.n_threads,
                delivered.map_or("?".to_owned(), |d| d.to_string())
            );
        }
        samples.push(sample);
    }
    Ok(samples)
}

async fn rss_part(args: &Args, binary: &Path) -> Result<()> {
    let mut builder = TestNode::builder();
    if let Some(dir) = &args.dir {
        builder = builder.parent_dir(dir);
    }
    let mut node = builder.start().await?;
    let measured = measure_agent(&node, args, binary).await;
    // Stop the node even after a failure.
    node.stop().await?;
    measured
}

async fn measure_agent(node: &TestNode, args: &Args, binary: &Path) -> Result<()> {
    let mut edge = TestEdge::create(node, "bench-pi", &rss_sources())?;
    println!(
        "agent: {} run, sim source 10 devices x temperature every 1000 ms, for {} s (load average {})",
        binary.display(),
        args.rss_seconds,
        load_average()
    );
    edge.spawn().await?;
    let pid = edge.pid().ok_or_else(|| anyhow!("the agent has no pid"))?;
    let (cpu_before, agent_cpu_before) = (CpuSnapshot::take(), pid_cpu_seconds(pid));
    let sampled = sample_memory(&edge, pid, args.rss_seconds).await;
    let agent_cpu = pid_cpu_seconds(pid)
        .zip(agent_cpu_before)
        .map(|(after, before)| after - before);
    let (node_cpu, others) = CpuSnapshot::take().since(&cpu_before);
    let status = edge.status().await;
    let shown = print_mappings(pid);
    let stopped = edge.stop().await;
    let samples = sampled?;
    let status = status?;
    shown?;
    stopped?;
    let max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or_default();
    println!(
        "agent memory: VmRSS max {}, final {}; VmHWM final {}; {} threads; target <= 20 MiB: {}",
        mib(max),
        mib(last.rss_kib),
        mib(last.hwm_kib),
        last.n_threads,
        if last.hwm_kib <= 20 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    let seconds = args.rss_seconds as f64;
    let cores = |c: Option<f64>| c.map_or("?".to_owned(), |c| format!("{:.3}", c / seconds));
    let neighbours = others.zip(agent_cpu).map(|(o, a)| (o - a).max(0.0));
    println!(
        "cpu over {seconds:.0} s, in cores busy: agent {}, this process (node and bench) {}, neighbours {}",
        cores(agent_cpu),
        cores(node_cpu),
        cores(neighbours)
    );
    let read: u64 = status.sources.values().map(|s| s.read).sum();
    println!(
        "agent status: read {read}, delivered {}, in flight {}, batches {} ({} failed); load average {}",
        status.uplink.delivered,
        status.uplink.in_flight,
        status.uplink.batches,
        status.uplink.batches_failed,
        load_average()
    );
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let args = Arc::new(args);
    let spool_limit = Duration::from_secs(
        60 + args.fsync_seconds + 2 * args.seconds * args.sync_interval_ms.len() as u64,
    );
    let spool_args = args.clone();
    let spool_runs = tokio::task::spawn_blocking(move || spool_part(&spool_args));
    within("spool runs", spool_limit, spool_runs).await???;
    if args.rss_seconds > 0 {
        // Finding (or building, the first time) the agent binary may take minutes.
        let binary = tokio::task::spawn_blocking(sluice_tests::edge_bin);
        let binary = within("the sluice-edge binary", BUILD_MAX, binary).await???;
        let limit = STEP * 4 + Duration::from_secs(2 * args.rss_seconds);
        within("agent memory run", limit, rss_part(&args, &binary)).await??;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    sluice_tests::measure::bench_main(run(Args::parse()))
}

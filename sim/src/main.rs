//! `sluice-sim`: runs simulation seeds (one, a range, or a replay file), shows progress, prints
//! every failure with the one command that replays it, and exits non-zero if any seed failed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_sim::trace::hex;
use sluice_sim::{logging, run_seed, Plant, RunOutcome, RunSummary, Settings};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// Deterministic simulation of a Sluice node and edge agents under crashes, torn writes, power
/// cuts, outages and a faulty network.
#[derive(Debug, Parser)]
#[command(name = "sluice-sim", version)]
struct Cli {
    /// Run one seed, streaming its log to stderr.
    #[arg(long, conflicts_with_all = ["seeds", "replay_file"])]
    seed: Option<u64>,
    /// Run a range of seeds: `A..B` (B excluded) or `A..=B`.
    #[arg(long, conflicts_with = "replay_file")]
    seeds: Option<String>,
    /// Run the seeds listed in a file: one per line, `#` starts a comment.
    #[arg(long)]
    replay_file: Option<PathBuf>,
    /// Simulated length of the safety phase (workload and faults), in ms.
    #[arg(long, default_value_t = Settings::default().safety_ms)]
    safety_ms: u64,
    /// Simulated time within which every record must be acknowledged once faults stop, in ms.
    #[arg(long, default_value_t = Settings::default().liveness_ms)]
    liveness_ms: u64,
    /// Most producers per run (each run draws 2 to this many).
    #[arg(long, default_value_t = Settings::default().producers_max)]
    producers_max: u32,
    /// Most crashes and restarts per run (each run draws 1 to this many).
    #[arg(long, default_value_t = Settings::default().faults_max)]
    faults_max: u32,
    /// Most edge agents per run (each run draws 0 to this many).
    #[arg(long, default_value_t = Settings::default().edges_max)]
    edges_max: u32,
    /// Do not inject fdatasync failures (each becomes a clean restart; other draws unchanged).
    #[arg(long)]
    no_sync_errors: bool,
    /// Seeds run in parallel, each on its own thread and runtime (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Log at debug level.
    #[arg(long)]
    verbose: bool,
    /// Log filter, `EnvFilter` syntax (overrides --verbose), e.g. `sluice_node=debug`.
    #[arg(long)]
    log: Option<String>,
    /// Print every seed's trace hash (to compare runs across processes).
    #[arg(long)]
    print_hash: bool,
    /// Plant a bug, to check that the checkers catch it.
    #[arg(long, value_enum, hide = true)]
    plant: Option<Plant>,
}

fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .with_context(|| format!("{s:?} is not a seed"))
    };
    if let Some((low, high)) = text.split_once("..=") {
        return Ok((number(low)?..=number(high)?).collect());
    }
    if let Some((low, high)) = text.split_once("..") {
        return Ok((number(low)?..number(high)?).collect());
    }
    Ok(vec![number(text)?])
}

fn read_seed_file(path: &PathBuf) -> Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut seeds = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let seed = content.parse::<u64>().with_context(|| {
            format!("{}:{}: {content:?} is not a seed", path.display(), idx + 1)
        })?;
        seeds.push(seed);
    }
    Ok(seeds)
}

impl Cli {
    fn settings(&self) -> Settings {
        Settings {
            safety_ms: self.safety_ms,
            liveness_ms: self.liveness_ms,
            producers_max: self.producers_max,
            faults_max: self.faults_max,
            edges_max: self.edges_max,
            sync_errors: !self.no_sync_errors,
            plant: self.plant,
        }
    }

    fn seeds(&self) -> Result<Vec<u64>> {
        match (&self.seed, &self.seeds, &self.replay_file) {
            (Some(seed), _, _) => Ok(vec![*seed]),
            (_, Some(range), _) => parse_seeds(range),
            (_, _, Some(path)) => read_seed_file(path),
            _ => bail!(
                "say which seeds to run: --seed N, --seeds A..B or --replay-file sim/seeds.txt"
            ),
        }
    }

    /// The command that replays `seed` with these settings.
    fn replay_command(&self, seed: u64) -> String {
        let defaults = Settings::default();
        let mut command = format!("cargo run -p sluice-sim --release -- --seed {seed}");
        for (flag, value, default) in [
            ("--safety-ms", self.safety_ms, defaults.safety_ms),
            ("--liveness-ms", self.liveness_ms, defaults.liveness_ms),
            (
                "--producers-max",
                u64::from(self.producers_max),
                u64::from(defaults.producers_max),
            ),
            (
                "--faults-max",
                u64::from(self.faults_max),
                u64::from(defaults.faults_max),
            ),
            (
                "--edges-max",
                u64::from(self.edges_max),
                u64::from(defaults.edges_max),
            ),
        ] {
            if value != default {
                command.push_str(&format!(" {flag} {value}"));
            }
        }
        if self.no_sync_errors {
            command.push_str(" --no-sync-errors");
        }
        if let Some(plant) = self.plant {
            command.push_str(&format!(" --plant {}", plant.flag()));
        }
        command
    }
}

fn progress_bar(n: usize, interactive: bool) -> ProgressBar {
    let target = if interactive {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(n as u64), target);
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {msg} [{elapsed}, eta {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message("0 failed");
    bar
}

fn report_failure(cli: &Cli, outcome: &RunOutcome, log: &str) -> String {
    let seed = outcome.summary.seed;
    let mut text = String::new();
    if let Some(violation) = &outcome.failure {
        text.push_str(&format!(
            "FAILED seed {seed} at simulated t={:.3}s: {violation}\n",
            outcome.summary.sim_time.as_secs_f64()
        ));
    }
    text.push_str(&format!("  replay: {}\n", cli.replay_command(seed)));
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    if !tail.is_empty() {
        text.push_str("  last log lines:\n");
        for line in tail.into_iter().rev() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text.push_str(&format!("  keep it: add {seed} to sim/seeds.txt\n"));
    text
}

/// One line describing a finished run.
fn summary_line(s: &RunSummary) -> String {
    let t = &s.edge_totals;
    let edges = format!(
        "edges {} (boots {}, power cuts {} ({} mid-io), clean restarts {}, outages {}, \
         accepted {}, events {}, declared power-loss {} spool-full {} expired {}), \
         jumps {} ({:.1}h)",
        s.n_edges,
        s.n_edge_boots,
        s.n_edge_power_cuts,
        s.n_edge_power_cuts_mid_io,
        s.n_edge_clean_restarts,
        s.n_edge_outages,
        s.n_edge_accepted,
        t.n_events,
        t.n_power_loss,
        t.n_spool_full,
        t.n_expired,
        s.n_jumps,
        s.jumped.as_secs_f64() / 3600.0,
    );
    format!(
        "seed {} hash {} steps {} records {} events {} dup-acks {} too-old {} \
         crashes {}+{} mid-io ({} fired) +{} in recovery, {} clean restarts, {} sync errors, \
         {} torn writes, {} checks, {} ops after stop, {edges}, simulated {:.1}s",
        s.seed,
        hex(&s.trace_hash),
        s.n_steps,
        s.n_records,
        s.n_events,
        s.n_duplicate_acks,
        s.n_too_old,
        s.n_crashes,
        s.n_crashes_mid_io,
        s.n_fired_mid_io,
        s.n_recovery_crashes,
        s.n_clean_restarts,
        s.n_sync_errors,
        s.n_torn_writes,
        s.n_checks,
        s.n_ops_after_stop,
        s.sim_time.as_secs_f64()
    )
}

/// Runs `seeds` on `jobs` worker threads (each seed on its own runtime), sending each outcome
/// and its captured log (when several seeds run) to `results`.
fn run_workers(
    seeds: &[u64],
    settings: &Settings,
    jobs: usize,
    results: mpsc::Sender<(RunOutcome, String)>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let capture = seeds.len() > 1;
    for _ in 0..jobs {
        let (results, next, seeds, settings) = (
            results.clone(),
            next.clone(),
            seeds.to_vec(),
            settings.clone(),
        );
        std::thread::spawn(move || loop {
            let Some(seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)).copied() else {
                return;
            };
            if capture {
                logging::capture_start();
            }
            let outcome = run_seed(seed, &settings);
            let log = logging::capture_take();
            if results.send((outcome, log)).is_err() {
                return;
            }
        });
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let seeds = cli.seeds()?;
    if seeds.is_empty() {
        bail!("no seeds to run");
    }
    let default_filter = if cli.verbose { "debug" } else { "warn" };
    logging::init(cli.log.as_deref().unwrap_or(default_filter));
    let single = seeds.len() == 1;
    let jobs = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let interactive = !single && std::io::stderr().is_terminal() && !ci;
    let bar = progress_bar(seeds.len(), interactive);
    let (mut n_done, mut n_failed, mut n_records) = (0usize, 0usize, 0usize);
    let (results_tx, results) = mpsc::channel();
    run_workers(&seeds, &cli.settings(), jobs, results_tx);
    for (outcome, log) in results {
        n_done += 1;
        n_records += outcome.summary.n_records;
        if cli.print_hash || single {
            bar.suspend(|| println!("{}", summary_line(&outcome.summary)));
        }
        if outcome.failure.is_some() {
            n_failed += 1;
            let text = report_failure(&cli, &outcome, &log);
            bar.suspend(|| eprint!("{text}"));
            bar.set_message(format!("{n_failed} failed"));
        }
        bar.inc(1);
        if !interactive && !single && (n_done % 10 == 0 || n_done == seeds.len()) {
            eprintln!("{n_done}/{} seeds done, {n_failed} failed", seeds.len());
        }
    }
    let elapsed = bar.elapsed();
    bar.finish_and_clear();
    let per_minute = n_done as f64 / elapsed.as_secs_f64().max(1e-9) * 60.0;
    eprintln!(
        "{n_done} seeds, {n_failed} failed, {n_records} records, {:.1}s wall \
         ({per_minute:.0} seeds/minute, {jobs} jobs)",
        elapsed.as_secs_f64()
    );
    if n_failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_like_rust_ranges() {
        // Checks the `--seeds` forms: `A..B` excludes B, `A..=B` includes it, a number is one
        // seed, and anything else is an error rather than an empty run.
        assert_eq!(parse_seeds("1..4").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("42").unwrap(), vec![42]);
        assert!(parse_seeds("1..x").is_err());
        assert!(parse_seeds("").is_err());
    }
}

//! `sluice-sim`: runs simulation seeds (one, a range, or a replay file), shows progress, prints
//! every failure with the one command that replays it, and exits non-zero if any seed failed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_sim::cluster::{self, ClusterSummary};
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
    /// Run the seeds listed in a file: one per line, `#` starts a comment. A seed may be
    /// followed by settings flags of its own (`7141 --edges-max 6`), applied over the command
    /// line's.
    #[arg(long)]
    replay_file: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
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
}

/// The settings of a run, as flags (on the command line, or after a seed in a replay file).
#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
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
    /// Also inject faults on edge disks: failed `fdatasync` calls (Linux semantics) and a full
    /// disk for a while (writes that grow a file fail with ENOSPC). Off by default, so seeds
    /// keep their traces; CI runs a profile of its own with them.
    #[arg(long)]
    edge_disk_faults: bool,
    /// Also damage node partition files while the node is down (a flipped bit, a zeroed range
    /// or a truncation of an acknowledged region of a segment or manifest, or a deleted
    /// segment). Acked records may then be lost only where the partition reports corruption.
    /// Off by default: seeds keep their traces.
    #[arg(long)]
    disk_corruption: bool,
    /// Plant a bug, to check that the checkers catch it.
    #[arg(long, value_enum, hide = true)]
    plant: Option<Plant>,
    /// Run the cluster mode on this many nodes (3 to 5): replicas of the metadata group, each
    /// on its own simulated disk, over a faulty simulated network (partitions, one-way cuts,
    /// flapping, loss, duplication, delay, crashes, pauses, power loss of every node), with
    /// clients and a linearizability checker. Without it: one node with edges, as before.
    #[arg(long, value_parser = clap::value_parser!(u32).range(3..=5))]
    nodes: Option<u32>,
}

/// One line of a replay file: the settings flags after its seed.
#[derive(Debug, Parser)]
#[command(name = "replay line", no_binary_name = true, args_override_self = true)]
struct LineArgs {
    #[command(flatten)]
    run: RunArgs,
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

/// The seeds of a replay file, each with its settings: `base` with the line's flags over it.
fn parse_seed_file(text: &str, name: &str, base: &RunArgs) -> Result<Vec<(u64, Settings)>> {
    let mut seeds = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        let mut words = content.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        let at = || format!("{name}:{}", idx + 1);
        let seed = first
            .parse::<u64>()
            .with_context(|| format!("{}: {first:?} is not a seed", at()))?;
        let args: Vec<String> = base
            .flags()
            .into_iter()
            .chain(words.map(str::to_owned))
            .collect();
        let line_args = LineArgs::try_parse_from(&args)
            .map_err(|e| anyhow::anyhow!("{}: {}", at(), e.render()))?;
        seeds.push((seed, line_args.run.settings()));
    }
    Ok(seeds)
}

impl RunArgs {
    fn settings(&self) -> Settings {
        Settings {
            safety_ms: self.safety_ms,
            liveness_ms: self.liveness_ms,
            producers_max: self.producers_max,
            faults_max: self.faults_max,
            edges_max: self.edges_max,
            sync_errors: !self.no_sync_errors,
            edge_disk_faults: self.edge_disk_faults,
            disk_corruption: self.disk_corruption,
            plant: self.plant,
            nodes: self.nodes,
        }
    }

    /// These settings as flags, leaving out defaults.
    fn flags(&self) -> Vec<String> {
        settings_flags(&self.settings())
    }
}

/// `settings` as `sluice-sim` flags, leaving out defaults.
fn settings_flags(settings: &Settings) -> Vec<String> {
    let defaults = Settings::default();
    let mut flags = Vec::new();
    for (flag, value, default) in [
        ("--safety-ms", settings.safety_ms, defaults.safety_ms),
        ("--liveness-ms", settings.liveness_ms, defaults.liveness_ms),
        (
            "--producers-max",
            u64::from(settings.producers_max),
            u64::from(defaults.producers_max),
        ),
        (
            "--faults-max",
            u64::from(settings.faults_max),
            u64::from(defaults.faults_max),
        ),
        (
            "--edges-max",
            u64::from(settings.edges_max),
            u64::from(defaults.edges_max),
        ),
    ] {
        if value != default {
            flags.push(flag.to_owned());
            flags.push(value.to_string());
        }
    }
    if !settings.sync_errors {
        flags.push("--no-sync-errors".to_owned());
    }
    if settings.edge_disk_faults {
        flags.push("--edge-disk-faults".to_owned());
    }
    if settings.disk_corruption {
        flags.push("--disk-corruption".to_owned());
    }
    if let Some(plant) = settings.plant {
        flags.push("--plant".to_owned());
        flags.push(plant.flag().to_owned());
    }
    if let Some(nodes) = settings.nodes {
        flags.push("--nodes".to_owned());
        flags.push(nodes.to_string());
    }
    flags
}

/// The command that replays `seed` with `settings`.
fn replay_command(seed: u64, settings: &Settings) -> String {
    let mut command = format!("cargo run -p sluice-sim --release -- --seed {seed}");
    for flag in settings_flags(settings) {
        command.push(' ');
        command.push_str(&flag);
    }
    command
}

impl Cli {
    /// Every seed to run, with its settings.
    fn seeds(&self) -> Result<Vec<(u64, Settings)>> {
        let settings = self.run.settings();
        let with = |seeds: Vec<u64>| seeds.into_iter().map(|s| (s, settings.clone())).collect();
        match (&self.seed, &self.seeds, &self.replay_file) {
            (Some(seed), _, _) => Ok(with(vec![*seed])),
            (_, Some(range), _) => Ok(with(parse_seeds(range)?)),
            (_, _, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                parse_seed_file(&text, &path.display().to_string(), &self.run)
            }
            _ => bail!(
                "say which seeds to run: --seed N, --seeds A..B or --replay-file sim/seeds.txt"
            ),
        }
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

fn report_failure(outcome: &RunOutcome, settings: &Settings, log: &str) -> String {
    let seed = outcome.summary.seed;
    let mut text = String::new();
    if let Some(violation) = &outcome.failure {
        text.push_str(&format!(
            "FAILED seed {seed} at simulated t={:.3}s: {violation}\n",
            outcome.summary.sim_time.as_secs_f64()
        ));
    }
    text.push_str(&format!("  replay: {}\n", replay_command(seed, settings)));
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    if !tail.is_empty() {
        text.push_str("  last log lines:\n");
        for line in tail.into_iter().rev() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    let line = std::iter::once(seed.to_string())
        .chain(settings_flags(settings))
        .collect::<Vec<_>>()
        .join(" ");
    text.push_str(&format!("  keep it: add `{line}` to sim/seeds.txt\n"));
    text
}

/// One line describing a finished cluster run.
fn cluster_summary_line(s: &ClusterSummary) -> String {
    format!(
        "seed {} nodes {} hash {} steps {} clients {} writes applied {} rejected {} unknown {} \
         reads {}, partitions {} one-way {} flaps {} delay spikes {} crashes {} pauses {} \
         power losses {} torn writes {}, last index {}, simulated {:.1}s",
        s.seed,
        s.n_nodes,
        hex(&s.trace_hash),
        s.n_steps,
        s.n_clients,
        s.n_applied,
        s.n_rejected,
        s.n_unknown,
        s.n_reads,
        s.n_partitions,
        s.n_one_way,
        s.n_flaps,
        s.n_delay_spikes,
        s.n_crashes,
        s.n_pauses,
        s.n_power_losses,
        s.n_torn_writes,
        s.last_index,
        s.sim_time.as_secs_f64()
    )
}

/// Runs one seed in the mode its settings say; its outcome and its summary line.
fn run_one(seed: u64, settings: &Settings) -> (RunOutcome, String) {
    match settings.nodes {
        None => {
            let outcome = run_seed(seed, settings);
            let line = summary_line(&outcome.summary);
            (outcome, line)
        }
        Some(nodes) => {
            let outcome = cluster::run_seed(seed, settings, nodes);
            let line = cluster_summary_line(&outcome.summary);
            let summary = RunSummary {
                seed,
                trace_hash: outcome.summary.trace_hash,
                n_steps: outcome.summary.n_steps,
                sim_time: outcome.summary.sim_time,
                ..RunSummary::default()
            };
            let outcome = RunOutcome {
                summary,
                failure: outcome.failure,
            };
            (outcome, line)
        }
    }
}

/// One line describing a finished run.
fn summary_line(s: &RunSummary) -> String {
    let damage = if s.n_disk_damage > 0 {
        format!(
            ", disk damage {} ({} partitions reported corrupt)",
            s.n_disk_damage, s.n_corruption_reports
        )
    } else {
        String::new()
    };
    format!("{}{damage}", summary_line_base(s))
}

fn summary_line_base(s: &RunSummary) -> String {
    let t = &s.edge_totals;
    let edges = format!(
        "edges {} (boots {}, power cuts {} ({} mid-io), clean restarts {}, outages {}, \
         accepted {}, events {}, declared power-loss {} spool-full {} expired {}, \
         sync failures {}, disk full {} ({} writes refused)), jumps {} ({:.1}h)",
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
        s.n_edge_sync_failures,
        s.n_edge_disk_full,
        s.n_edge_no_space,
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

/// Runs `seeds` (each with its settings) on `jobs` worker threads (each seed on its own
/// runtime), sending each outcome, its settings and its captured log (when several seeds run)
/// to `results`.
fn run_workers(
    seeds: &[(u64, Settings)],
    jobs: usize,
    results: mpsc::Sender<(RunOutcome, String, Settings, String)>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let capture = seeds.len() > 1;
    let seeds: Arc<[(u64, Settings)]> = seeds.into();
    for _ in 0..jobs {
        let (results, next, seeds) = (results.clone(), next.clone(), seeds.clone());
        std::thread::spawn(move || loop {
            let Some((seed, settings)) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return;
            };
            if capture {
                logging::capture_start();
            }
            let (outcome, line) = run_one(*seed, settings);
            let log = logging::capture_take();
            if results
                .send((outcome, line, settings.clone(), log))
                .is_err()
            {
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
    for (seed, settings) in &seeds {
        if let Some(plant) = settings.plant {
            if plant.is_cluster() != settings.nodes.is_some() {
                bail!(
                    "seed {seed}: --plant {} {} --nodes",
                    plant.flag(),
                    if plant.is_cluster() {
                        "needs"
                    } else {
                        "does not go with"
                    }
                );
            }
        }
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
    run_workers(&seeds, jobs, results_tx);
    for (outcome, line, settings, log) in results {
        n_done += 1;
        n_records += outcome.summary.n_records;
        if cli.print_hash || single {
            bar.suspend(|| println!("{line}"));
        }
        if outcome.failure.is_some() {
            n_failed += 1;
            let text = report_failure(&outcome, &settings, &log);
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

    #[test]
    fn replay_lines_carry_their_own_settings() {
        // Checks replay files: a bare seed takes the command line's settings, flags after a
        // seed override them for that seed only, and a bad flag names the file and line.
        let base = Cli::parse_from(["sluice-sim", "--seed", "1", "--edges-max", "5"]).run;
        let text = "# a comment\n4\n\n7141 --producers-max 8 --edges-max 6  # found x\n";
        let seeds = parse_seed_file(text, "seeds.txt", &base).unwrap();
        assert_eq!(seeds.len(), 2);
        assert_eq!((seeds[0].0, seeds[0].1.edges_max), (4, 5));
        assert_eq!(seeds[0].1.producers_max, Settings::default().producers_max);
        assert_eq!((seeds[1].0, seeds[1].1.edges_max), (7141, 6));
        assert_eq!(seeds[1].1.producers_max, 8);
        let cluster = parse_seed_file(
            "5 --nodes 5 --plant metadata-ack-before-fsync\n",
            "s",
            &base,
        )
        .unwrap();
        assert_eq!(cluster[0].1.nodes, Some(5));
        assert_eq!(
            settings_flags(&cluster[0].1),
            [
                "--edges-max",
                "5",
                "--plant",
                "metadata-ack-before-fsync",
                "--nodes",
                "5"
            ]
        );
        assert!(parse_seed_file("5 --nodes 2\n", "s", &base).is_err());
        assert!(parse_seed_file("5 --nodes 6\n", "s", &base).is_err());
        let error = parse_seed_file("9 --edges-maxx 2\n", "seeds.txt", &base).unwrap_err();
        assert!(error.to_string().contains("seeds.txt:1"), "{error}");
        assert!(parse_seed_file("x\n", "seeds.txt", &base).is_err());
    }
}

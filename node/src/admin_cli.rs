//! Admin commands of the CLI: `sluice streams create|list|describe|delete`, `sluice acl
//! add|list|remove`, `sluice cluster init|status`. Each sends one `AdminRequest` over QUIC +
//! mTLS with an admin certificate to any member node (a follower forwards changes to the
//! metadata leader) and prints the answer as a table, or as JSON with `--output json`. A refusal
//! is printed as its typed error and the command exits with status 1.

use crate::client_cli::ConnectOptions;
use anyhow::{anyhow, bail};
use sluice_proto::msg::{AdminAnswer, AdminOp, AdminRequest, ClusterStatus, Message, StreamInfo};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// `sluice streams …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StreamsCommand {
    /// Create a stream; the cluster places its replicas over sites.
    Create {
        /// The stream's name (`A-Z a-z 0-9 . _ -`, not starting with `.`).
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// Replicas per partition (at most the active nodes).
        #[arg(long = "replication-factor")]
        replication_factor: u32,
        /// Keep events this long, e.g. `7d`, `12h`, `30m` (default: no bound).
        #[arg(long, value_parser = parse_duration_ms)]
        retention: Option<u64>,
        /// Keep at most this much per partition, e.g. `50GiB`, `500MB` (default: no bound).
        #[arg(long = "retention-bytes", value_parser = parse_bytes)]
        retention_bytes: Option<u64>,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// List the streams.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// Show a stream and its partitions' replicas.
    Describe {
        /// The stream's name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// Delete a stream, its partitions and the ACL entries naming it.
    Delete {
        /// The stream's name.
        name: String,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
}

/// `sluice acl …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AclCommand {
    /// Allow an identity to write a stream.
    Add {
        /// The identity URI, `sluice://<cluster>/<edge|admin|node>/<name>`.
        identity: String,
        /// The stream.
        stream: String,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// List the ACL entries.
    List {
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// Withdraw an identity's right to write a stream.
    Remove {
        /// The identity URI.
        identity: String,
        /// The stream.
        stream: String,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
}

/// `sluice cluster …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Form the cluster from the receiving node's `initial_members` (start every member
    /// first) and apply its config's streams and ACL rules once. Run it once, on one node.
    Init {
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
    /// The cluster's nodes, sites, leader and partition counts.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Connection.
        #[command(flatten)]
        connect: ConnectOptions,
    },
}

/// Sends `op` to a node reached through `connect` and returns its answer, or the typed
/// refusal as an error.
pub async fn request(connect: &ConnectOptions, op: AdminOp) -> anyhow::Result<AdminAnswer> {
    let client = connect.connect().await?;
    let answer = client
        .call(Message::AdminRequest(AdminRequest { request_id: 0, op }))
        .await;
    client.close();
    match answer? {
        Message::AdminResponse(response) => response.result.map_err(|e| anyhow!("{e}")),
        Message::Error(e) => bail!("{:?}: {}", e.code, e.message),
        other => bail!("unexpected answer {:?}", other.kind()),
    }
}

/// Runs `sluice streams …`.
pub async fn streams(command: &StreamsCommand) -> anyhow::Result<()> {
    match command {
        StreamsCommand::Create {
            name,
            partitions,
            replication_factor,
            retention,
            retention_bytes,
            connect,
        } => {
            let op = AdminOp::StreamCreate {
                name: name.clone(),
                n_partitions: *partitions,
                factor: *replication_factor,
                retention_age_ms_max: *retention,
                retention_bytes_max: *retention_bytes,
            };
            let answer = request(connect, op).await?;
            if let AdminAnswer::StreamCreated(info) = answer {
                println!("created stream {}", info.name);
                print!("{}", stream_table(&info));
            }
            Ok(())
        }
        StreamsCommand::List { output, connect } => {
            let answer = request(connect, AdminOp::StreamList).await?;
            print_streams(answer, *output)
        }
        StreamsCommand::Describe {
            name,
            output,
            connect,
        } => {
            let op = AdminOp::StreamDescribe { name: name.clone() };
            print_streams(request(connect, op).await?, *output)
        }
        StreamsCommand::Delete { name, connect } => {
            let op = AdminOp::StreamDelete { name: name.clone() };
            if let AdminAnswer::StreamDeleted { n_partitions } = request(connect, op).await? {
                println!("deleted stream {name} ({n_partitions} partitions)");
            }
            Ok(())
        }
    }
}

fn print_streams(answer: AdminAnswer, output: Output) -> anyhow::Result<()> {
    let AdminAnswer::Streams(streams) = answer else {
        bail!("unexpected answer {answer:?}");
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&streams)?),
        Output::Table => {
            if streams.is_empty() {
                println!("no streams");
            }
            for info in &streams {
                print!("{}", stream_table(info));
            }
        }
    }
    Ok(())
}

/// A stream as text: one line, then one line per partition it carries.
pub fn stream_table(info: &StreamInfo) -> String {
    let mut out = format!(
        "{:<24} partitions={:<5} replication_factor={} retention={} retention_bytes={}\n",
        info.name.as_str(),
        info.n_partitions,
        info.factor,
        info.retention_age_ms_max
            .map_or("none".to_owned(), |ms| format!("{ms}ms")),
        info.retention_bytes_max
            .map_or("none".to_owned(), |b| format!("{b}B")),
    );
    for p in &info.partitions {
        let replicas: Vec<String> = p.replicas.iter().map(|n| n.to_string()).collect();
        out.push_str(&format!(
            "  partition {:<5} incarnation {:<6} replicas {}{}\n",
            p.partition.0,
            p.incarnation,
            replicas.join(","),
            if p.moving { " (moving)" } else { "" }
        ));
    }
    out
}

/// Runs `sluice acl …`.
pub async fn acl(command: &AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Add {
            identity,
            stream,
            connect,
        } => {
            let op = AdminOp::AclAdd {
                identity: identity.clone(),
                stream: stream.clone(),
            };
            if let AdminAnswer::AclChanged { changed } = request(connect, op).await? {
                let note = if changed { "" } else { " (it already was)" };
                println!("{identity} may write {stream}{note}");
            }
        }
        AclCommand::Remove {
            identity,
            stream,
            connect,
        } => {
            let op = AdminOp::AclRemove {
                identity: identity.clone(),
                stream: stream.clone(),
            };
            if let AdminAnswer::AclChanged { changed } = request(connect, op).await? {
                let note = if changed {
                    ""
                } else {
                    " (it had no such entry)"
                };
                println!("{identity} may no longer write {stream}{note}");
            }
        }
        AclCommand::List { connect } => {
            if let AdminAnswer::Acls(entries) = request(connect, AdminOp::AclList).await? {
                if entries.is_empty() {
                    println!("no acl entries");
                }
                for entry in entries {
                    let streams: Vec<&str> = entry.streams.iter().map(|s| s.as_str()).collect();
                    println!("{:<48} {}", entry.identity.uri(), streams.join(","));
                }
            }
        }
    }
    Ok(())
}

/// Runs `sluice cluster …`.
pub async fn cluster(command: &ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init { connect } => {
            if let AdminAnswer::ClusterInitialized {
                n_streams,
                n_acl_entries,
                n_acl_rules_skipped,
            } = request(connect, AdminOp::ClusterInit).await?
            {
                println!(
                    "cluster initialized: {n_streams} streams and {n_acl_entries} acl entries \
                     from the config"
                );
                if n_acl_rules_skipped > 0 {
                    println!(
                        "{n_acl_rules_skipped} acl rules with identity patterns were not \
                         recorded (the cluster's acl names exact identities)"
                    );
                }
            }
        }
        ClusterCommand::Status { output, connect } => {
            let answer = request(connect, AdminOp::ClusterStatus).await?;
            let AdminAnswer::Cluster(status) = answer else {
                bail!("unexpected answer {answer:?}");
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print!("{}", status_table(&status)),
            }
        }
    }
    Ok(())
}

/// A cluster status as text.
pub fn status_table(status: &ClusterStatus) -> String {
    let leader = status
        .leader
        .map_or("none".to_owned(), |l| format!("node {l}"));
    let mut out = format!(
        "metadata leader: {leader} (term {}, applied index {}, answered by node {})\n\
         streams: {}, partitions: {}\n\
         {:<6} {:<22} {:<12} {:<10} {:<9} {:<6} replicas\n",
        status.term,
        status.applied_index,
        status.node,
        status.n_streams,
        status.n_partitions,
        "node",
        "address",
        "site",
        "rack",
        "state",
        "voter",
    );
    for n in &status.nodes {
        out.push_str(&format!(
            "{:<6} {:<22} {:<12} {:<10} {:<9} {:<6} {}\n",
            n.id.0,
            n.address,
            n.site,
            n.rack.as_deref().unwrap_or("-"),
            format!("{:?}", n.state).to_lowercase(),
            if n.voter { "yes" } else { "no" },
            n.n_replicas,
        ));
    }
    out
}

/// Parses a duration such as `7d`, `12h`, `30m`, `45s` or `500ms` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 7d, 12h, 30m, 45s or 500ms"))?;
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unit {unit:?} is not one of ms, s, m, h, d, w"
            ))
        }
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!(
            "{text:?}: a retention of 0 would delete everything"
        )),
        Some(ms) => Ok(ms),
        None => Err(format!("{text:?} is too long")),
    }
}

/// Parses a size such as `50GiB`, `500MB`, `64KiB` or `1024` (bytes) into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 50GiB, 500MB or 1024"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unit {unit:?} is not one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
            ))
        }
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!(
            "{text:?}: a retention of 0 bytes would delete everything"
        )),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_their_units() {
        // Checks the retention flags' parsers: each unit, and typed refusals of a missing
        // number, an unknown unit, zero and overflow.
        for (text, ms) in [
            ("7d", 604_800_000),
            ("12h", 43_200_000),
            ("30m", 1_800_000),
            ("45s", 45_000),
            ("500ms", 500),
            ("2w", 1_209_600_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for bad in ["", "d", "7", "7y", "0d", "99999999999999999999d", "-1d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad} accepted");
        }
        for (text, bytes) in [
            ("50GiB", 50u64 << 30),
            ("500MB", 500_000_000),
            ("64KiB", 65_536),
            ("1024", 1024),
            ("3B", 3),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "GiB", "5 GiB", "5gb", "0", "20000000000TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad} accepted");
        }
    }
}

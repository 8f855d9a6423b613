//! What a run does: its length, its size and its planted bug. Everything else about a run (the
//! node's streams and bounds, in cluster runs the network's fault rates and the clients, the producers, the edges, the link's faults, the crash and outage
//! schedules) is drawn from the seed, so one seed plus these settings is one run.

/// A bug planted on purpose, to prove the checkers can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// `fdatasync` of the first partition's segment files does nothing after their first sync,
    /// so the node acknowledges writes that a crash then loses.
    AckBeforeFsync,
    /// The simulated transport of edge 0 swallows every record of the sensor stream of the
    /// first reading it carries after that reading, and tells the agent they were appended:
    /// the agent releases readings the node never stored.
    EdgeAckUnstored,
    /// Cluster runs (`--nodes`) only: the raft log store's appends skip their `fdatasync` and
    /// still complete openraft's `LogFlushed`, so replicas acknowledge entries, and the leader
    /// commits them, before they are durable on a quorum; a power cut then loses them.
    MetadataAckBeforeFsync,
}

impl Plant {
    /// The `--plant` value that selects it.
    pub fn flag(self) -> &'static str {
        match self {
            Plant::AckBeforeFsync => "ack-before-fsync",
            Plant::EdgeAckUnstored => "edge-ack-unstored",
            Plant::MetadataAckBeforeFsync => "metadata-ack-before-fsync",
        }
    }

    /// Whether the plant belongs to cluster runs (`--nodes`) rather than single-node runs.
    pub fn is_cluster(self) -> bool {
        matches!(self, Plant::MetadataAckBeforeFsync)
    }
}

/// The knobs of a run that do not come from the seed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Simulated length of the safety phase (workload and faults), in ms.
    pub safety_ms: u64,
    /// Bound, in simulated ms, within which every record must be acknowledged once faults stop.
    pub liveness_ms: u64,
    /// Most producers a run has (it draws 2 to this many).
    pub producers_max: u32,
    /// Most crashes and restarts in the safety phase (a run has at least one crash).
    pub faults_max: u32,
    /// Most edge agents a run has (it draws 0 to this many).
    pub edges_max: u32,
    /// Inject `fdatasync` failures (Linux semantics). Turning them off replaces each one with a
    /// clean restart and leaves every other draw of the seed unchanged.
    pub sync_errors: bool,
    /// Also fail `fdatasync` calls and fill the disk on edge disks (seeded, from RNGs of their
    /// own, so every other draw of the seed is unchanged). Off by default: see `--help`.
    pub edge_disk_faults: bool,
    /// While the node is down (between a crash and its restart), sometimes damage an
    /// acknowledged region of a partition's segment or manifest, or delete a segment (seeded,
    /// from an RNG of its own, so every other draw of the seed is unchanged). The checkers then
    /// accept a loss only where the partition reports the corruption. Off by default.
    pub disk_corruption: bool,
    /// A planted bug, if any.
    pub plant: Option<Plant>,
    /// Run the cluster mode with this many nodes (3 to 5): replicas of the metadata group over
    /// the simulated peer network ([`crate::cluster`]) instead of one node with edges. `None`
    /// (the default) is the single-node run.
    pub nodes: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            safety_ms: 20_000,
            liveness_ms: 30_000,
            producers_max: 5,
            faults_max: 6,
            edges_max: 3,
            sync_errors: true,
            edge_disk_faults: false,
            disk_corruption: false,
            plant: None,
            nodes: None,
        }
    }
}

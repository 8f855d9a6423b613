//! The metadata group on three in-process nodes over real QUIC on loopback: one CA, node
//! certificates made with `sluice_node::certs` (through `CertDir`), each node with its own data
//! directory and a `[cluster]` section listing all three. Admin requests go over the client
//! protocol with an admin certificate. Every wait is on an event (a request's answer, the
//! metadata group's metrics) with a deadline; nothing sleeps.

use sluice_node::config::{self, NodeConfig};
use sluice_node::env::real_env;
use sluice_node::Node;
use sluice_proto::msg::{
    AclEntry, AdminAnswer, AdminError, AdminNodeState, AdminOp, AdminRequest, ErrorCode, Message,
};
use sluice_proto::net::{Client, ClientSettings, NetError};
use sluice_proto::{Identity, NodeId, Role, StreamName};
use sluice_tests::{
    free_udp_port, run_cli, stem, within, CertDir, TestNode, Validity, CLUSTER, STEP,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const ADMIN: &str = "admin-ops";

/// Three nodes of one cluster, on fixed loopback ports (their peer addresses are in every
/// config, so a restart must find them again).
struct Cluster {
    dir: tempfile::TempDir,
    certs: CertDir,
    configs: Vec<NodeConfig>,
    nodes: Vec<Option<Node>>,
    n_starts: u64,
}

fn config_text(dir: &Path, certs: &CertDir, id: u64, ports: &[u16]) -> String {
    let quote =
        |path: std::path::PathBuf| serde_json::to_string(&path.display().to_string()).unwrap();
    let node_stem = stem(Role::Node, &id.to_string());
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(idx, port)| format!("{} = \"127.0.0.1:{port}\"\n", idx + 1))
        .collect();
    format!(
        r#"
[node]
id = {id}
cluster = "{CLUSTER}"
data_dir = {data}
stats_interval_ms = 0

[transport]
listen = "127.0.0.1:{port}"
ca_cert = {ca}
cert = {cert}
key = {key}

[storage]
segment_bytes_max = 8388608

[[streams]]
name = "events"
partitions = 2
replication_factor = 3

[[acl]]
identity = "sluice://{CLUSTER}/edge/pi-1"
produce = ["events"]

[[acl]]
identity = "sluice://{CLUSTER}/admin/*"
produce = ["*"]
consume = ["*"]

[cluster]
site = "site-{id}"

[cluster.initial_members]
{members}
[cluster.metadata]
heartbeat_interval_ms = 100
election_timeout_min_ms = 500
election_timeout_max_ms = 1000
request_timeout_ms = 10000
"#,
        port = ports[id as usize - 1],
        data = quote(dir.join(format!("node-{id}"))),
        ca = quote(certs.ca_cert()),
        cert = quote(certs.cert(&node_stem)),
        key = quote(certs.key(&node_stem)),
    )
}

impl Cluster {
    fn create() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .unwrap();
        let certs = CertDir::create_in(&dir.path().join("certs"), CLUSTER).unwrap();
        for id in 1..=3 {
            certs
                .issue(Role::Node, &id.to_string(), Validity::Now)
                .unwrap();
        }
        certs.issue(Role::Admin, "ops", Validity::Now).unwrap();
        certs.issue(Role::Edge, "pi-1", Validity::Now).unwrap();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_udp_port().unwrap();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let configs = (1..=3)
            .map(|id| config::from_toml(&config_text(dir.path(), &certs, id, &ports)).unwrap())
            .collect();
        Cluster {
            dir,
            certs,
            configs,
            nodes: vec![None, None, None],
            n_starts: 0,
        }
    }

    async fn start_all(&mut self) {
        for idx in 0..3 {
            self.n_starts += 1;
            let config = self.configs[idx].clone();
            let env = real_env(self.n_starts);
            let node = within("node start", STEP, async move {
                let mut node = Node::start(&config, env).await.unwrap();
                node.serve(&config).await.unwrap();
                node
            })
            .await
            .unwrap();
            self.nodes[idx] = Some(node);
        }
    }

    async fn stop_all(&mut self) {
        for slot in &mut self.nodes {
            if let Some(node) = slot.take() {
                within("node stop", STEP, node.stop()).await.unwrap();
            }
        }
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.configs[id as usize - 1].transport.listen
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1].as_ref().unwrap()
    }

    /// Waits until every node knows the same metadata leader (elections may follow each other
    /// while the nodes start, so any disagreement waits for the next change of any node's view).
    async fn leader(&self) -> NodeId {
        let mut views: Vec<_> = (1..=3)
            .map(|id| self.node(id).admin().unwrap().group().metrics())
            .collect();
        let agreed = async {
            loop {
                let leaders: Vec<Option<u64>> = views
                    .iter_mut()
                    .map(|v| v.borrow_and_update().current_leader)
                    .collect();
                if let Some(leader) = leaders[0] {
                    if leaders.iter().all(|l| *l == Some(leader)) {
                        return NodeId(leader);
                    }
                }
                let [one, two, three] = &mut views[..] else {
                    unreachable!("three nodes")
                };
                tokio::select! {
                    biased;
                    _ = one.changed() => {}
                    _ = two.changed() => {}
                    _ = three.changed() => {}
                }
            }
        };
        within("an agreed metadata leader", STEP, agreed)
            .await
            .unwrap()
    }

    async fn client(&self, id: u64, certificate: &str) -> Client {
        let material = self.certs.material(certificate).unwrap();
        let mut settings = ClientSettings::new(material, CLUSTER, vec![self.addr(id).to_string()]);
        settings.connect_timeout_ms = 10_000;
        settings.request_timeout_ms = 30_000;
        within("connect", STEP, Client::connect(&settings))
            .await
            .unwrap()
            .unwrap()
    }

    /// One admin request to node `id` with certificate `certificate`; the whole answer.
    async fn call(&self, id: u64, certificate: &str, op: AdminOp) -> Result<Message, NetError> {
        let client = self.client(id, certificate).await;
        let answer = within(
            "admin request",
            Duration::from_secs(60),
            client.call(Message::AdminRequest(AdminRequest { request_id: 0, op })),
        )
        .await
        .unwrap();
        client.close();
        answer
    }

    /// One admin request to node `id` with the admin certificate.
    async fn admin(&self, id: u64, op: AdminOp) -> Result<AdminAnswer, AdminError> {
        match self.call(id, ADMIN, op).await.unwrap() {
            Message::AdminResponse(response) => response.result,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    async fn streams(&self, id: u64) -> Vec<String> {
        match self.admin(id, AdminOp::StreamList).await {
            Ok(AdminAnswer::Streams(streams)) => streams
                .into_iter()
                .map(|s| s.name.as_str().to_owned())
                .collect(),
            other => panic!("node {id}: {other:?}"),
        }
    }

    async fn acls(&self, id: u64) -> Vec<AclEntry> {
        match self.admin(id, AdminOp::AclList).await {
            Ok(AdminAnswer::Acls(entries)) => entries,
            other => panic!("node {id}: {other:?}"),
        }
    }
}

fn create(name: &str, n_partitions: u32, factor: u32) -> AdminOp {
    AdminOp::StreamCreate {
        name: name.into(),
        n_partitions,
        factor,
        retention_age_ms_max: Some(7 * 86_400_000),
        retention_bytes_max: None,
    }
}

fn identity(uri: &str) -> Identity {
    Identity::parse_uri(uri).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_metadata_group_and_keep_it_across_a_restart() {
    // Checks the node side of the metadata group end to end on three in-process nodes over
    // QUIC: before `cluster init` a metadata read is unavailable; init through node 2 forms the
    // group, every node registers itself with its site, and the config's stream and exact ACL
    // rule are applied once (the pattern rule is skipped); every node then reports the same
    // leader and three active nodes. A stream created through node 3's admin request is
    // visible at once (linearizable reads) on every node with replicas on all three sites; an
    // ACL entry added through node 1 is listed by node 2; an edge certificate is refused as
    // Forbidden; a bad name, a replication factor above the nodes and a duplicate stream get
    // typed errors; the CLI does the same over the same requests. After all three nodes stop
    // and start again, the metadata is the same on
    // every node and a second init is refused.
    let mut cluster = Cluster::create();
    cluster.start_all().await;

    let before = cluster.admin(1, AdminOp::StreamList).await;
    assert!(
        matches!(before, Err(AdminError::Unavailable { .. })),
        "{before:?}"
    );

    let init = cluster.admin(2, AdminOp::ClusterInit).await;
    assert_eq!(
        init,
        Ok(AdminAnswer::ClusterInitialized {
            n_streams: 1,
            n_acl_entries: 1,
            n_acl_rules_skipped: 1,
        })
    );
    let leader = cluster.leader().await;
    for id in 1..=3 {
        let Ok(AdminAnswer::Cluster(status)) = cluster.admin(id, AdminOp::ClusterStatus).await
        else {
            panic!("no status from node {id}");
        };
        assert_eq!(status.node, NodeId(id));
        assert_eq!(status.leader, Some(leader), "node {id}");
        assert_eq!(status.n_streams, 1);
        assert_eq!(status.n_partitions, 2);
        let sites: Vec<(u64, String, AdminNodeState, bool)> = status
            .nodes
            .iter()
            .map(|n| (n.id.0, n.site.clone(), n.state, n.voter))
            .collect();
        assert_eq!(
            sites,
            (1..=3)
                .map(|n| (n, format!("site-{n}"), AdminNodeState::Active, true))
                .collect::<Vec<_>>(),
            "node {id}"
        );
        assert!(status.nodes.iter().all(|n| n.n_replicas == 2), "{status:?}");
    }

    let created = cluster.admin(3, create("temps", 4, 3)).await;
    let Ok(AdminAnswer::StreamCreated(info)) = created else {
        panic!("{created:?}");
    };
    assert_eq!(info.partitions.len(), 4);
    for id in 1..=3 {
        let described = cluster
            .admin(
                id,
                AdminOp::StreamDescribe {
                    name: "temps".into(),
                },
            )
            .await;
        let Ok(AdminAnswer::Streams(streams)) = described else {
            panic!("node {id}: {described:?}");
        };
        assert_eq!(streams, vec![info.clone()], "node {id}");
        assert!(streams[0]
            .partitions
            .iter()
            .all(|p| p.replicas == vec![NodeId(1), NodeId(2), NodeId(3)]));
    }

    let added = cluster
        .admin(
            1,
            AdminOp::AclAdd {
                identity: format!("sluice://{CLUSTER}/edge/pi-2"),
                stream: "temps".into(),
            },
        )
        .await;
    assert_eq!(added, Ok(AdminAnswer::AclChanged { changed: true }));
    let expected_acls = vec![
        AclEntry {
            identity: identity(&format!("sluice://{CLUSTER}/edge/pi-1")),
            streams: vec![StreamName::new("events").unwrap()],
        },
        AclEntry {
            identity: identity(&format!("sluice://{CLUSTER}/edge/pi-2")),
            streams: vec![StreamName::new("temps").unwrap()],
        },
    ];
    assert_eq!(cluster.acls(2).await, expected_acls);

    let refused = cluster
        .call(1, &stem(Role::Edge, "pi-1"), AdminOp::StreamList)
        .await;
    assert!(
        matches!(&refused, Err(NetError::Remote { code: ErrorCode::Forbidden, message })
            if message.contains("need an admin certificate")),
        "{refused:?}"
    );

    let bad = cluster.admin(2, create("../etc", 1, 1)).await;
    assert!(
        matches!(&bad, Err(AdminError::InvalidName { what, name, .. })
            if what == "stream name" && name == "../etc"),
        "{bad:?}"
    );
    let too_many = cluster.admin(2, create("wide", 1, 5)).await;
    assert_eq!(
        too_many,
        Err(AdminError::InvalidReplicationFactor {
            factor: 5,
            n_active: 3
        })
    );
    let again = cluster.admin(1, create("temps", 1, 1)).await;
    assert_eq!(
        again,
        Err(AdminError::StreamExists {
            name: StreamName::new("temps").unwrap()
        })
    );
    let bad_identity = cluster
        .admin(
            3,
            AdminOp::AclAdd {
                identity: "edge/pi-3".into(),
                stream: "temps".into(),
            },
        )
        .await;
    assert!(
        matches!(&bad_identity, Err(AdminError::InvalidName { what, .. }) if what == "identity"),
        "{bad_identity:?}"
    );

    check_cli(&cluster).await;

    cluster.stop_all().await;
    cluster.start_all().await;
    cluster.leader().await;
    for id in 1..=3 {
        assert_eq!(
            cluster.streams(id).await,
            vec!["events", "temps"],
            "node {id}"
        );
        assert_eq!(cluster.acls(id).await, expected_acls, "node {id}");
    }
    assert_eq!(
        cluster.admin(3, AdminOp::ClusterInit).await,
        Err(AdminError::AlreadyInitialized)
    );
    cluster.stop_all().await;
    drop(cluster.dir);
}

/// The `sluice` CLI against the running cluster: `cluster status --output json` from node 1
/// lists three active nodes, `streams create` prints the created stream, a bad name exits 1
/// with the typed error printed, and `acl list` shows the bootstrap entry.
async fn check_cli(cluster: &Cluster) {
    let addr = cluster.addr(1).to_string();
    let certs = cluster.certs.path().display().to_string();
    let connect = [
        "--node",
        addr.as_str(),
        "--certs",
        certs.as_str(),
        "--as",
        ADMIN,
    ];
    let cli = |args: Vec<&str>| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(connect.iter().map(|a| a.to_string()));
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run_cli(&args, b"", Duration::from_secs(120)).await.unwrap()
        }
    };
    let status = cli(vec!["cluster", "status", "--output", "json"]).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{json}");
    assert!(nodes.iter().all(|n| n["state"] == "active"), "{json}");

    let created = cli(vec![
        "streams",
        "create",
        "doors",
        "--partitions",
        "2",
        "--replication-factor",
        "3",
        "--retention",
        "7d",
        "--retention-bytes",
        "50GiB",
    ])
    .await;
    assert_eq!(created.code, Some(0), "{created:?}");
    assert!(
        created.stdout.contains("created stream doors"),
        "{created:?}"
    );
    assert!(
        created
            .stdout
            .contains("retention=604800000ms retention_bytes=53687091200B"),
        "{created:?}"
    );

    let bad = cli(vec![
        "streams",
        "create",
        "../etc",
        "--partitions",
        "1",
        "--replication-factor",
        "1",
    ])
    .await;
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(
        bad.stderr.contains("invalid stream name \"../etc\""),
        "{bad:?}"
    );
    let acls = cli(vec!["acl", "list"]).await;
    assert_eq!(acls.code, Some(0), "{acls:?}");
    assert!(
        acls.stdout
            .contains(&format!("sluice://{CLUSTER}/edge/pi-1")),
        "{acls:?}"
    );
    let deleted = cli(vec!["streams", "delete", "doors"]).await;
    assert_eq!(deleted.code, Some(0), "{deleted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cluster_answers_admin_requests_as_not_clustered() {
    // Checks that a single node (no [cluster] section) keeps working as before and answers an
    // admin request with the typed NotClustered refusal.
    let mut node = TestNode::in_process().await.unwrap();
    let client = node.admin().await.unwrap();
    let answer = within(
        "admin request",
        STEP,
        client.call(Message::AdminRequest(AdminRequest {
            request_id: 0,
            op: AdminOp::StreamList,
        })),
    )
    .await
    .unwrap()
    .unwrap();
    let Message::AdminResponse(response) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(response.result, Err(AdminError::NotClustered));
    client.close();
    node.stop().await.unwrap();
}

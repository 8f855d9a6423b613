//! The `mqtt` source against a real Mosquitto broker (`sluice_tests::mosquitto`): readings from
//! a paho-mqtt publisher and from `mosquitto_pub`, malformed payloads, a broker restart, the
//! persistent session, TLS with a client certificate, and the smallest queues. Every wait has a
//! deadline; nothing sleeps.

use sluice_edge::source::mqtt::MqttConfig;
use sluice_edge::source::testing::{test_context, TestInbox};
use sluice_edge::source::{SourceError, SourceReading};
use sluice_proto::{Payload, Reading, UnixMillis};
use sluice_tests::mosquitto::{
    free_port, program, within_deadline as within, Broker, TEMPERATURE_TOPIC,
};
use std::path::Path;
use tempfile::TempDir;
use tokio::task::JoinHandle;

const SOURCE: &str = "mqtt-test";

/// A running source, stopped (its task aborted) when dropped.
struct RunningSource {
    task: JoinHandle<Result<(), SourceError>>,
}

impl RunningSource {
    /// Stops the source and waits until its task (and so its connection) is gone.
    async fn stop(self) {
        self.task.abort();
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test source's configuration; `extra` (keys, then tables) goes before its routes.
fn source_config(port: u16, client_id: &str, extra: &str) -> MqttConfig {
    use figment::providers::{Format, Toml};
    let toml = format!(
        r#"
        name = "{SOURCE}"
        host = "127.0.0.1"
        port = {port}
        client_id = "{client_id}"
        backoff_initial_ms = 100
        backoff_max_ms = 1000
        {extra}

        [[routes]]
        filter = "{TEMPERATURE_TOPIC}"
        stream = "env"
        sensor = "pi-1/{{2}}"
        format = "number"
        reading = "temperature"

        [[routes]]
        filter = "rooms/+/humidity"
        stream = "env"
        sensor = "{{1}}:humidity"
        format = "json"
        reading = "humidity"
        time_field = "ts"
        sensor_field = "sensor"

        [[routes]]
        filter = "scans/#"
        stream = "security"
        format = "opaque_json"
        "#
    );
    figment::Figment::new()
        .merge(Toml::string(&toml))
        .extract()
        .expect("source config")
}

/// Builds and starts the source; returns it and the inbox its readings arrive in.
fn start_source(port: u16, client_id: &str, state_dir: &Path) -> (RunningSource, TestInbox) {
    start_source_with(port, client_id, "", state_dir)
}

/// [`start_source`] with more TOML (keys, then tables such as `[tls]` or routes) before the
/// usual routes.
fn start_source_with(
    port: u16,
    client_id: &str,
    extra: &str,
    state_dir: &Path,
) -> (RunningSource, TestInbox) {
    let mut source = source_config(port, client_id, extra)
        .build()
        .expect("build the mqtt source");
    let (context, inbox) = test_context(SOURCE, sluice_proto::os::real_env(7), 16, state_dir);
    let task = tokio::spawn(async move { source.run(&context).await });
    (RunningSource { task }, inbox)
}

/// Waits until `inbox` holds `n` readings.
async fn readings(inbox: &mut TestInbox, n: usize) -> &[SourceReading] {
    within(&format!("{n} readings"), inbox.until_readings(n)).await;
    assert_eq!(inbox.readings.len(), n, "the source stopped early");
    &inbox.readings
}

fn celsius(readings: &[SourceReading]) -> Vec<f64> {
    readings
        .iter()
        .map(|r| match &r.payload {
            Payload::Reading(Reading::Temperature { celsius }) => *celsius,
            other => panic!("not a temperature: {other:?}"),
        })
        .collect()
}

/// A broker and a subscribed source, ready for messages.
async fn setup(client_id: &str) -> (TempDir, Broker, RunningSource, TestInbox) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start(dir.path(), free_port()).await;
    let (source, inbox) = start_source(broker.port, client_id, dir.path());
    broker
        .wait_log(&format!("Sending SUBACK to {client_id}"))
        .await;
    (dir, broker, source, inbox)
}

#[tokio::test]
async fn paho_publisher_temperatures_arrive_in_order() {
    // A Python paho-mqtt script publishing `client.publish("devsecops/sensors/temperature",
    // f"{temperature}")` for a sequence of values: every value arrives as a temperature reading of
    // the templated sensor, in publish order, stamped with the agent's wall clock.
    let (_dir, broker, _source, mut inbox) = setup("sluice-test-paho").await;
    let values = [
        "21", "21.5", "22.25", "-4.5", "0", "19.875", "100", "23.456", "-0.125", "30",
    ];
    broker.publish_with_paho(&values).await;
    let got = readings(&mut inbox, values.len()).await;
    let want: Vec<f64> = values.iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(celsius(got), want);
    for reading in got {
        assert_eq!(reading.stream.as_str(), "env");
        assert_eq!(reading.sensor.as_str(), "pi-1/temperature");
        assert!(
            reading.device_time > UnixMillis(1_600_000_000_000),
            "{reading:?}"
        );
    }
}

#[tokio::test]
async fn mosquitto_pub_json_messages_arrive_in_order() {
    // JSON objects from `mosquitto_pub`: values, device times and sensor ids come from the
    // configured fields (the sensor template when the field is absent), in publish order; opaque
    // JSON is kept as sent.
    let (_dir, broker, _source, mut inbox) = setup("sluice-test-json").await;
    broker
        .publish_lines(
            "rooms/lab/humidity",
            &[
                r#"{"value": 40.5, "ts": 1700000000001}"#,
                r#"{"value": 41, "ts": 1700000000002, "sensor": "hall:humidity"}"#,
                r#"{"value": 42.25, "ts": 1700000000003, "battery": 3.1}"#,
            ],
        )
        .await;
    broker
        .publish("scans/ci/42", &[r#"{"findings": [{"cve": "CVE-2024-1"}]}"#])
        .await;
    let got = readings(&mut inbox, 4).await;
    let humidity = |percent| Payload::Reading(Reading::Humidity { percent });
    let summary: Vec<_> = got
        .iter()
        .map(|r| (r.stream.as_str(), r.sensor.as_str(), r.payload.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("env", "lab:humidity", humidity(40.5)),
            ("env", "hall:humidity", humidity(41.0)),
            ("env", "lab:humidity", humidity(42.25)),
            (
                "security",
                "scans/ci/42",
                Payload::Json(r#"{"findings": [{"cve": "CVE-2024-1"}]}"#.to_owned())
            ),
        ]
    );
    let times: Vec<i64> = got[..3].iter().map(|r| r.device_time.0).collect();
    assert_eq!(
        times,
        [1_700_000_000_001, 1_700_000_000_002, 1_700_000_000_003]
    );
}

#[tokio::test]
async fn malformed_payloads_are_counted_and_the_source_keeps_running() {
    // Malformed payloads (empty, not a number, bad JSON, a missing field, an invalid sensor id)
    // are counted; the source keeps running and later good messages still arrive. The last message
    // is good, so once it arrives every rejection before it has been counted.
    let (_dir, broker, _source, mut inbox) = setup("sluice-test-malformed").await;
    broker
        .publish(TEMPERATURE_TOPIC, &["20.5", "hot", "", "1,5"])
        .await;
    broker
        .publish(
            "rooms/lab/humidity",
            &[
                "{not json",
                r#"{"ts": 1}"#,
                r#"{"value": 1, "sensor": "bad id"}"#,
            ],
        )
        .await;
    broker.publish("scans/x", &["{"]).await;
    broker
        .publish("rooms/lab/humidity", &[r#"{"value": 55}"#])
        .await;
    broker.publish(TEMPERATURE_TOPIC, &["21.5"]).await;
    let got = readings(&mut inbox, 3).await;
    let sensors: Vec<&str> = got.iter().map(|r| r.sensor.as_str()).collect();
    assert_eq!(
        sensors,
        ["pi-1/temperature", "lab:humidity", "pi-1/temperature"]
    );
    let rejected = inbox.rejected(SOURCE);
    assert_eq!(rejected.get("malformed_payload"), Some(&7), "{rejected:?}");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
}

#[tokio::test]
async fn filters_an_older_configuration_left_are_unsubscribed() {
    // A subscription an older configuration left in the broker's persistent session would keep
    // delivering; the source remembers its filters in its state directory and unsubscribes the
    // ones the configuration dropped, so messages on them no longer arrive (not even as
    // `unrouted_topic`) while the configured ones still do.
    let client_id = "sluice-test-unrouted";
    let old_route = "[[routes]]\nfilter = \"old/#\"\nstream = \"env\"\nformat = \"opaque_json\"";
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start(dir.path(), free_port()).await;
    let suback = format!("Sending SUBACK to {client_id}");
    let (old_source, _old_inbox) = start_source_with(broker.port, client_id, old_route, dir.path());
    broker.wait_log(&suback).await;
    old_source.stop().await;
    let (_source, mut inbox) = start_source(broker.port, client_id, dir.path());
    broker.wait_log(&suback).await;
    broker
        .wait_log(&format!("Sending UNSUBACK to {client_id}"))
        .await;
    broker.publish("old/topic", &["{}", "{}"]).await;
    broker.publish(TEMPERATURE_TOPIC, &["22"]).await;
    assert_eq!(celsius(readings(&mut inbox, 1).await), [22.0]);
    let rejected = inbox.rejected(SOURCE);
    assert!(rejected.is_empty(), "{rejected:?}");
}

#[tokio::test]
async fn source_reconnects_after_the_broker_restarts() {
    // The broker is killed mid-stream and started again on the same port without its state: the
    // source reconnects (with backoff), subscribes again because the session is gone, and the
    // messages published after the restart arrive after those from before it.
    let client_id = "sluice-test-restart";
    let (dir, broker, _source, mut inbox) = setup(client_id).await;
    broker.publish(TEMPERATURE_TOPIC, &["1", "2", "3"]).await;
    readings(&mut inbox, 3).await;
    let port = broker.port;
    broker.kill();
    let mut broker = Broker::start(dir.path(), port).await;
    broker
        .wait_log(&format!("Sending SUBACK to {client_id}"))
        .await;
    broker.publish(TEMPERATURE_TOPIC, &["4", "5", "6"]).await;
    let got = readings(&mut inbox, 6).await;
    assert_eq!(celsius(got), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[tokio::test]
async fn puback_waits_for_the_offer_and_the_session_keeps_messages() {
    // PUBACK waits for the offer and goes in arrival order, and the broker keeps the session while
    // the source is away. A good message A waits for its offer to be answered (the test inbox
    // never answers); the malformed message B after it is rejected at once, but its PUBACK waits
    // behind A's. The source is then stopped, C is published while it is away, and a new run under
    // the same client id receives A and B again (neither was acknowledged) and C.
    let client_id = "sluice-test-session";
    let (dir, mut broker, source, mut first_inbox) = setup(client_id).await;
    broker
        .publish(TEMPERATURE_TOPIC, &["30.5", "not-a-number"])
        .await;
    let sending = format!("Sending PUBLISH to {client_id}");
    broker.wait_log(&sending).await;
    broker.wait_log(&sending).await;
    // B is handled (rejected) as soon as it arrives; wait until it has been.
    within("B rejected", async {
        while inbox_rejections(&first_inbox) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    source.stop().await;
    // The stopped run did offer A: its request is still in the inbox.
    assert!(within("the first run's offer", first_inbox.step()).await);
    assert_eq!(celsius(&first_inbox.readings), [30.5]);

    broker.publish(TEMPERATURE_TOPIC, &["31.5"]).await;
    let (_source, mut inbox) = start_source(broker.port, client_id, dir.path());
    let got = readings(&mut inbox, 2).await;
    assert_eq!(celsius(got), [30.5, 31.5]);
    assert_eq!(
        inbox.rejected(SOURCE).get("malformed_payload"),
        Some(&1),
        "B came again: its PUBACK waited behind A's"
    );
    let puback = format!("Received PUBACK from {client_id}");
    assert!(
        !broker.seen.iter().any(|line| line.contains(&puback)),
        "nothing of the first run was acknowledged:\n{}",
        broker.seen.join("\n")
    );
}

fn inbox_rejections(inbox: &TestInbox) -> u64 {
    inbox.rejected(SOURCE).values().sum()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn write_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice mqtt test ca");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca certificate");
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write certificate");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
    };
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    leaf(
        "server",
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
    );
    leaf("client", vec!["sluice-edge".to_owned()]);
}

#[tokio::test]
async fn tls_with_client_certificate_and_password() {
    // TLS with the ring provider and credentials: the broker's TLS listener requires a client
    // certificate and every client must log in (the password is checked against a
    // mosquitto_passwd file). The source connects over TLS as user `edge` with the password read
    // from its file, and messages published on the plain listener reach it.
    use std::os::unix::fs::PermissionsExt;
    let client_id = "sluice-test-tls";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path();
    // Mosquitto started as root reads its files as user `mosquitto`.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    write_pki(path);
    let passwd = program(
        "mosquitto_passwd",
        "MOSQUITTO_PASSWD",
        &["/usr/bin"],
        "apt-get install -y mosquitto",
    );
    let status = std::process::Command::new(passwd)
        .args(["-b", "-c"])
        .arg(path.join("passwd"))
        .args(["edge", "pw-edge-1"])
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd failed");
    std::fs::write(path.join("edge-password"), "pw-edge-1\n").expect("write the password file");
    let tls_port = free_port();
    let settings = format!(
        "allow_anonymous false\npassword_file {dir}/passwd\n\
         listener {tls_port} 127.0.0.1\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\n\
         keyfile {dir}/server.key\nrequire_certificate true\n",
        dir = path.display()
    );
    let credentials = Some(("edge".to_owned(), "pw-edge-1".to_owned()));
    let mut broker = Broker::start_with(path, free_port(), &settings, credentials).await;
    let extra = format!(
        "username = \"edge\"\npassword_file = \"{dir}/edge-password\"\n\
         [tls]\nca_cert = \"{dir}/ca.pem\"\ncert = \"{dir}/client.pem\"\nkey = \"{dir}/client.key\"",
        dir = path.display()
    );
    let (_source, mut inbox) = start_source_with(tls_port, client_id, &extra, path);
    let connected = broker.wait_log(&format!(" as {client_id} ")).await;
    assert!(connected.contains("u'edge'"), "{connected}");
    broker
        .wait_log(&format!("Sending SUBACK to {client_id}"))
        .await;
    broker.publish(TEMPERATURE_TOPIC, &["18.5", "19"]).await;
    assert_eq!(celsius(readings(&mut inbox, 2).await), [18.5, 19.0]);
}

#[tokio::test]
async fn smallest_queues_still_deliver_and_acknowledge_everything() {
    // The smallest bounds: one message waiting for its offer and a request channel of one, so
    // reading from the broker pauses behind every offer and acknowledgements often find the
    // channel full (they then go on the event loop's own queue). All 20 messages still arrive in
    // order and the broker receives a PUBACK for each.
    let client_id = "sluice-test-small";
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::start(dir.path(), free_port()).await;
    let extra = "messages_pending_max = 1\nrequests_queued_max = 1\ninflight_max = 1";
    let (_source, mut inbox) = start_source_with(broker.port, client_id, extra, dir.path());
    broker
        .wait_log(&format!("Sending SUBACK to {client_id}"))
        .await;
    let values: Vec<String> = (0..20).map(|i| format!("{{\"value\": {i}}}")).collect();
    let lines: Vec<&str> = values.iter().map(String::as_str).collect();
    broker.publish_lines("rooms/lab/humidity", &lines).await;
    let got = readings(&mut inbox, 20).await;
    let percents: Vec<f64> = got
        .iter()
        .map(|r| match &r.payload {
            Payload::Reading(Reading::Humidity { percent }) => *percent,
            other => panic!("not a humidity: {other:?}"),
        })
        .collect();
    assert_eq!(percents, (0..20).map(f64::from).collect::<Vec<_>>());
    // PUBACKs wait for the flushes that make the readings durable: keep answering the inbox.
    let puback = format!("Received PUBACK from {client_id}");
    let mut n_acked = 0;
    while n_acked < 20 {
        tokio::select! {
            biased;
            _ = broker.wait_log(&puback) => n_acked += 1,
            _ = inbox.step() => {}
        }
    }
    assert!(inbox.n_flushes > 0, "the PUBACKs waited for flushes");
}

//! The `mqtt` source: subscribes to topic filters on a (usually local) MQTT 3.1.1 broker and
//! turns each message into a reading through the first route whose filter matches its topic.
//!
//! Delivery is at least once: the source subscribes with QoS 1 under a fixed client id with a
//! persistent session (`clean_session = false`), so the broker keeps QoS 1 messages while the
//! agent is away. PUBACKs go in arrival order, each once its message was handled: refused (or
//! malformed), or accepted and — with `ack_after = "durable"`, the default — made durable by a
//! spool flush (one `fdatasync` per burst: the flush runs when no message waits for its offer or
//! when `messages_pending_max` readings wait for durability). A message whose PUBACK was not sent
//! (a lost connection, a crash, a power cut) is sent again by the broker, so a reading can arrive
//! twice; it is not lost. With `ack_after = "spooled"` the PUBACK goes as soon as the spool took
//! the reading: no extra syncs, but a power cut within `spool.sync_interval_ms` loses it (and the
//! spool declares it `power_loss`). Messages published with QoS 0 (paho's default) are delivered
//! at most once: a broker does not keep them for a disconnected client.
//!
//! Messages that cannot become a reading are rejected (counted by reason, logged rate-limited)
//! and acknowledged all the same: `unrouted_topic` when no route matches (for example a message
//! the broker sent before an old filter was unsubscribed), `malformed_payload` when the payload
//! is not what the route expects, is larger than `payload_bytes_max`, or names an invalid sensor.
//!
//! Every queue is bounded: the messages waiting for their offer (`messages_pending_max`; the
//! source stops reading from the broker when it is full, which is how agent backpressure reaches
//! the broker), rumqttc's request channel (`requests_queued_max`) and its in-flight window
//! (`inflight_max`), and the largest packet read (`packet_bytes_max`). Lost connections are
//! retried forever with capped, jittered exponential backoff; `run` only returns when the agent
//! stops.
//!
//! The persistent session keeps subscriptions across restarts, so the source remembers its
//! filters in its state directory and unsubscribes the ones a newer configuration dropped
//! (`subscriptions.rs`).
//!
//! What it does not do: publish, speak MQTT 5, or validate values (the agent does).

mod route;
mod session;
mod subscriptions;
mod tls;

use super::{Source, SourceContext, SourceError};
use crate::validate::ValidationConfig;
use route::{Filter, Format, Kind, Route, Router, Template};
use rumqttc::MqttOptions;
use serde::Deserialize;
use sluice_proto::env::BoxFuture;
use sluice_proto::StreamName;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The largest packet MQTT can carry, bytes.
const PACKET_BYTES_LIMIT: u32 = 268_435_455;

/// `[[sources]] type = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The source's name (unique in the config; a label in metrics).
    pub name: String,
    /// The broker's host name or IP address (with TLS, also the name its certificate must
    /// carry). Default `localhost`.
    #[serde(default = "default_host")]
    pub host: String,
    /// The broker's port. Default 1883.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The MQTT client id. The broker keeps this client's session (subscriptions and unacked
    /// QoS 1 messages) under it, so it must be stable and unique on the broker. Default
    /// `sluice-edge-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The user name to log in with, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (one line; a trailing newline is ignored). Read when the
    /// source is built; never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Connect with TLS; unset means plain TCP. (Boxed to keep `SourceSpec` variants of
    /// similar size.)
    #[serde(default)]
    pub tls: Option<Box<MqttTlsConfig>>,
    /// How often the connection is checked with a ping when idle, ms (whole seconds, at least
    /// 1000). Default 30000.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Deadline of one connection attempt (TCP, TLS and CONNACK), ms, rounded up to whole
    /// seconds. Default 5000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First wait after a failed connection, ms; doubled per consecutive failure, with jitter.
    /// Default 500.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest wait between connection attempts, ms. Default 30000.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Largest payload turned into a reading, bytes; larger ones are rejected as
    /// `malformed_payload` (and acknowledged). Default 65536.
    #[serde(default = "default_payload_bytes_max")]
    pub payload_bytes_max: u32,
    /// Largest packet read from the broker, bytes. A larger one breaks the connection and the
    /// broker sends it again on every reconnect: keep this above the broker's
    /// `message_size_limit`. Default 1048576.
    #[serde(default = "default_packet_bytes_max")]
    pub packet_bytes_max: u32,
    /// Messages read from the broker and waiting for their offer; when full, the source stops
    /// reading until the agent takes one. Default 32.
    #[serde(default = "default_messages_pending_max")]
    pub messages_pending_max: u32,
    /// Capacity of the client's request channel (acknowledgements on their way to the broker).
    /// Default 64.
    #[serde(default = "default_requests_queued_max")]
    pub requests_queued_max: u32,
    /// The client's window of unacknowledged outgoing packets. Default 16.
    #[serde(default = "default_inflight_max")]
    pub inflight_max: u16,
    /// When a QoS 1 message is acknowledged to the broker: `"durable"` (default) once the spool
    /// made its reading durable (an `fdatasync` per burst of messages, so a crash or power cut
    /// right after can only make the broker send it again), or `"spooled"` as soon as the spool
    /// took it (no extra syncs, spares SD cards; a power cut within `spool.sync_interval_ms`
    /// loses it, declared as `power_loss`).
    #[serde(default)]
    pub ack_after: AckAfter,
    /// Topic routes, tried in order; the first whose filter matches takes the message.
    pub routes: Vec<MqttRouteConfig>,
    /// Plausibility bounds and limits.
    #[serde(default)]
    pub validation: ValidationConfig,
}

/// `[sources.tls]` of an `mqtt` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// The CA certificate(s) the broker's certificate must chain to (PEM).
    pub ca_cert: PathBuf,
    /// This client's certificate (PEM), when the broker asks for one; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM); needs `cert`. Never logged.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// One `[[sources.routes]]` entry: which topics, where their readings go, which sensor they
/// are from and how their payloads read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttRouteConfig {
    /// An MQTT topic filter; `+` matches one level, a final `#` any number.
    pub filter: String,
    /// The stream the readings go to.
    pub stream: StreamName,
    /// The sensor id: a template where `{topic}` is the whole topic and `{0}`, `{1}`, … are
    /// its levels (`sensors/{1}`); the result must be a valid sensor id. Default `{topic}`.
    #[serde(default = "default_sensor")]
    pub sensor: String,
    /// How payloads are read.
    pub format: PayloadFormat,
    /// What the number is (formats `number` and `json`).
    #[serde(default)]
    pub reading: Option<ReadingKind>,
    /// The metric's name (`reading = "metric"`).
    #[serde(default)]
    pub metric_name: Option<String>,
    /// The metric's unit (`reading = "metric"`). Default empty.
    #[serde(default)]
    pub unit: Option<String>,
    /// The field holding the value, a JSON number (format `json`). Default `value`.
    #[serde(default = "default_value_field")]
    pub value_field: String,
    /// The field holding the device time in unix milliseconds (format `json`); when unset, or
    /// absent from a message, the agent's wall clock is used.
    #[serde(default)]
    pub time_field: Option<String>,
    /// The field holding the sensor id (format `json`); when present in a message it replaces
    /// the `sensor` template. Only for trusted publishers: it lets whoever may publish on the
    /// filter write as any sensor of the stream (the topic no longer decides), and every new id
    /// counts towards `spool.sensors_max`.
    #[serde(default)]
    pub sensor_field: Option<String>,
}

/// How a route reads payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A plain number as text (`23.5`), as `client.publish(topic, f"{value}")` sends it;
    /// surrounding whitespace is ignored. The device time is the agent's wall clock.
    Number,
    /// A JSON object with the value in `value_field` and optionally the time and sensor id.
    Json,
    /// Any valid JSON, kept as text (`Payload::Json`).
    OpaqueJson,
}

/// What a route's numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingKind {
    /// Temperature in °C.
    Temperature,
    /// Relative humidity in %.
    Humidity,
    /// A named metric (`metric_name`, `unit`).
    Metric,
}

fn default_host() -> String {
    "localhost".to_owned()
}
fn default_port() -> u16 {
    1883
}
fn default_keep_alive_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_payload_bytes_max() -> u32 {
    64 << 10
}
fn default_packet_bytes_max() -> u32 {
    1 << 20
}
fn default_messages_pending_max() -> u32 {
    32
}
fn default_requests_queued_max() -> u32 {
    64
}
fn default_inflight_max() -> u16 {
    16
}
fn default_sensor() -> String {
    "{topic}".to_owned()
}
fn default_value_field() -> String {
    "value".to_owned()
}

impl MqttConfig {
    /// The streams its readings go to: every route's, in route order, without repeats.
    pub fn streams(&self) -> Vec<StreamName> {
        let mut streams: Vec<StreamName> = Vec::new();
        for route in &self.routes {
            if !streams.contains(&route.stream) {
                streams.push(route.stream.clone());
            }
        }
        streams
    }

    /// The client id the broker knows this source by.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-edge-{}", self.name))
    }

    /// Adds every problem to `problems`, prefixed by `at`.
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        for problem in self.connection_problems() {
            problems.push(format!("{at}.{problem}"));
        }
        if self.routes.is_empty() {
            problems.push(format!(
                "{at}.routes: at least one [[sources.routes]] is needed"
            ));
        }
        for (idx, route) in self.routes.iter().enumerate() {
            if let Err(found) = compile_route(route) {
                problems.extend(found.into_iter().map(|p| format!("{at}.routes[{idx}].{p}")));
            }
        }
    }

    fn connection_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push("host must not be empty".to_owned());
        }
        if self.client_id.as_deref() == Some("") {
            problems
                .push("client_id must not be empty (a persistent session needs one)".to_owned());
        }
        if self.password_file.is_some() && self.username.is_none() {
            problems.push("password_file needs a username (MQTT 3.1.1)".to_owned());
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                problems.push("tls: cert and key go together".to_owned());
            }
        }
        if self.keep_alive_ms < 1_000
            || self.keep_alive_ms % 1_000 != 0
            || self.keep_alive_ms / 1_000 > u64::from(u16::MAX)
        {
            problems.push(format!(
                "keep_alive_ms ({}) must be whole seconds from 1000 to 65535000",
                self.keep_alive_ms
            ));
        }
        for (name, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("payload_bytes_max", u64::from(self.payload_bytes_max)),
            ("messages_pending_max", u64::from(self.messages_pending_max)),
            ("requests_queued_max", u64::from(self.requests_queued_max)),
            ("inflight_max", u64::from(self.inflight_max)),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            problems.push("backoff_max_ms must be at least backoff_initial_ms".to_owned());
        }
        if self.packet_bytes_max < self.payload_bytes_max
            || self.packet_bytes_max > PACKET_BYTES_LIMIT
        {
            problems.push(format!(
                "packet_bytes_max ({}) must be from payload_bytes_max ({}) to {PACKET_BYTES_LIMIT}",
                self.packet_bytes_max, self.payload_bytes_max
            ));
        }
        problems
    }

    /// Builds the source: compiles the routes, reads the password and TLS files, and sets up
    /// the client options. Nothing connects until the source runs.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(self.build_source()?))
    }

    fn build_source(&self) -> Result<MqttSource, SourceError> {
        let setup = |reason: String| SourceError::Setup {
            source_name: self.name.clone(),
            reason,
        };
        let mut problems = Vec::new();
        self.validate(&format!("sources.{}", self.name), &mut problems);
        if !problems.is_empty() {
            return Err(setup(format!(
                "invalid configuration: {}",
                problems.join("; ")
            )));
        }
        let routes = self
            .routes
            .iter()
            .map(compile_route)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|found| setup(found.join("; ")))?;
        let router = Router::new(routes, self.payload_bytes_max as usize);
        let options = self.options().map_err(setup)?;
        Ok(MqttSource {
            name: self.name.clone(),
            options,
            router,
            messages_pending_max: self.messages_pending_max as usize,
            requests_queued_max: self.requests_queued_max as usize,
            inflight_max: self.inflight_max,
            ack_after_durable: self.ack_after == AckAfter::Durable,
            connect_timeout_s: self.connect_timeout_ms.div_ceil(1_000),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        })
    }

    /// The client options, credentials and TLS included. Call after `validate` found nothing.
    fn options(&self) -> Result<MqttOptions, String> {
        let mut options = MqttOptions::new(self.client_id(), self.host.clone(), self.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(self.keep_alive_ms / 1_000))
            .set_max_packet_size(
                self.packet_bytes_max as usize,
                self.packet_bytes_max as usize,
            )
            .set_request_channel_capacity(self.requests_queued_max as usize)
            .set_inflight(self.inflight_max);
        if let Some(username) = &self.username {
            let password = match &self.password_file {
                Some(path) => tls::read_password(path)?,
                None => String::new(),
            };
            options.set_credentials(username.clone(), password);
        }
        if let Some(config) = &self.tls {
            options.set_transport(tls::transport(config)?);
        }
        Ok(options)
    }
}

/// Turns a route's configuration into a [`Route`], or lists every problem (without prefix).
fn compile_route(config: &MqttRouteConfig) -> Result<Route, Vec<String>> {
    let mut problems = Vec::new();
    let filter = Filter::parse(&config.filter)
        .map_err(|why| problems.push(format!("filter {:?} {why}", config.filter)))
        .ok();
    let sensor = Template::parse(&config.sensor)
        .map_err(|why| problems.push(format!("sensor {:?} {why}", config.sensor)))
        .ok();
    if let (Some(filter), Some(sensor)) = (&filter, &sensor) {
        if let Err(why) = sensor.check_levels(filter) {
            problems.push(format!("sensor {:?} {why}", config.sensor));
        }
    }
    let format = compile_format(config, &mut problems);
    match (filter, sensor, format) {
        (Some(filter), Some(sensor), Some(format)) if problems.is_empty() => Ok(Route {
            filter,
            stream: config.stream.clone(),
            sensor,
            format,
        }),
        _ => Err(problems),
    }
}

fn compile_format(config: &MqttRouteConfig, problems: &mut Vec<String>) -> Option<Format> {
    if config.format != PayloadFormat::Json {
        for (key, set) in [
            ("time_field", config.time_field.is_some()),
            ("sensor_field", config.sensor_field.is_some()),
        ] {
            if set {
                problems.push(format!("{key} is only read with format = \"json\""));
            }
        }
    }
    match config.format {
        PayloadFormat::OpaqueJson => {
            if config.reading.is_some() {
                problems.push("reading does not apply to format = \"opaque_json\"".to_owned());
            }
            Some(Format::OpaqueJson)
        }
        PayloadFormat::Number => compile_kind(config, problems).map(Format::Number),
        PayloadFormat::Json => {
            if config.value_field.is_empty() {
                problems.push("value_field must not be empty".to_owned());
            }
            Some(Format::Json {
                kind: compile_kind(config, problems)?,
                value_field: config.value_field.clone(),
                time_field: config.time_field.clone(),
                sensor_field: config.sensor_field.clone(),
            })
        }
    }
}

fn compile_kind(config: &MqttRouteConfig, problems: &mut Vec<String>) -> Option<Kind> {
    let metric = config.reading == Some(ReadingKind::Metric);
    if !metric && (config.metric_name.is_some() || config.unit.is_some()) {
        problems.push("metric_name and unit only apply to reading = \"metric\"".to_owned());
    }
    match config.reading {
        None => {
            problems.push(
                "reading must say what the numbers are: \"temperature\", \"humidity\" or \"metric\""
                    .to_owned(),
            );
            None
        }
        Some(ReadingKind::Temperature) => Some(Kind::Temperature),
        Some(ReadingKind::Humidity) => Some(Kind::Humidity),
        Some(ReadingKind::Metric) => match config.metric_name.as_deref() {
            None | Some("") => {
                problems.push("reading = \"metric\" needs a metric_name".to_owned());
                None
            }
            Some(name) => {
                let unit = config.unit.clone().unwrap_or_default();
                let sample = sluice_proto::Reading::Metric {
                    name: name.to_owned(),
                    unit: unit.clone(),
                    value: 0.0,
                };
                if let Err(reason) = sample.check() {
                    problems.push(reason);
                    return None;
                }
                Some(Kind::Metric {
                    name: name.to_owned(),
                    unit,
                })
            }
        },
    }
}

/// When a QoS 1 message is acknowledged to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckAfter {
    /// Once the reading is durable in the spool.
    #[default]
    Durable,
    /// Once the spool took the reading (durable within its sync interval).
    Spooled,
}

/// A built `mqtt` source. Its client options hold the password, so `Debug` leaves them out.
struct MqttSource {
    name: String,
    options: MqttOptions,
    router: Router,
    messages_pending_max: usize,
    requests_queued_max: usize,
    inflight_max: u16,
    ack_after_durable: bool,
    connect_timeout_s: u64,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, port) = self.options.broker_address();
        f.debug_struct("MqttSource")
            .field("name", &self.name)
            .field("host", &host)
            .field("port", &port)
            .field("client_id", &self.options.client_id())
            .field("filters", &self.router.filters().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Source for MqttSource {
    fn run<'a>(&'a mut self, context: &'a SourceContext) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(session::run(self, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> MqttConfig {
        use figment::providers::{Format as _, Toml};
        figment::Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .unwrap_or_else(|error| panic!("{error}\n{toml}"))
    }

    const BASE: &str = r#"
        name = "m"
        [[routes]]
        filter = "devsecops/sensors/temperature"
        stream = "env"
        sensor = "pi1/{2}"
        format = "number"
        reading = "temperature"
    "#;

    fn check_problems(extra_toml: &str, route_toml: &str, expected: &[&str]) {
        let toml = format!("{extra_toml}\n{BASE}\n{route_toml}");
        let mut problems = Vec::new();
        parse(&toml).validate("sources.m", &mut problems);
        for want in expected {
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "no problem with {want:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    // The smallest configuration is valid, gets every default, and builds.
    #[test]
    fn defaults() {
        let config = parse(BASE);
        check_problems("", "", &[]);
        assert_eq!(config.host, "localhost");
        assert_eq!(config.port, 1883);
        assert_eq!(config.client_id(), "sluice-edge-m");
        assert_eq!(config.routes[0].value_field, "value");
        assert_eq!(config.streams(), vec![StreamName::new("env").unwrap()]);
        let source = config.build_source().unwrap();
        assert!(format!("{source:?}").contains("sluice-edge-m"));
    }

    // Every problem is reported with its path, not just the first one.
    #[test]
    fn problems_are_all_reported() {
        check_problems(
            "keep_alive_ms = 1500\nmessages_pending_max = 0\nbackoff_max_ms = 1\npassword_file = \"/p\"",
            "",
            &["sources.m.keep_alive_ms", "sources.m.messages_pending_max", "sources.m.backoff_max_ms", "sources.m.password_file"],
        );
        check_problems(
            "payload_bytes_max = 100\npacket_bytes_max = 99",
            "",
            &["packet_bytes_max (99)"],
        );
        check_problems("client_id = \"\"", "", &["client_id must not be empty"]);
    }

    // Route problems name the route: bad filters and templates, missing or misplaced kinds.
    #[test]
    fn route_problems() {
        let route = |body: &str| format!("[[routes]]\nstream = \"env\"\n{body}");
        check_problems(
            "",
            &route("filter = \"a/#/b\"\nformat = \"opaque_json\""),
            &["routes[1].filter \"a/#/b\""],
        );
        check_problems(
            "",
            &route("filter = \"a/+\"\nsensor = \"{2}\"\nformat = \"opaque_json\""),
            &["routes[1].sensor \"{2}\" names level {2}"],
        );
        check_problems(
            "",
            &route("filter = \"a\"\nformat = \"number\""),
            &["routes[1].reading must say"],
        );
        check_problems(
            "",
            &route("filter = \"a\"\nformat = \"json\"\nreading = \"metric\""),
            &["needs a metric_name"],
        );
        check_problems(
            "",
            &route("filter = \"a\"\nformat = \"number\"\nreading = \"humidity\"\nunit = \"%\"\ntime_field = \"t\""),
            &["metric_name and unit only apply", "time_field is only read"],
        );
        check_problems(
            "",
            &route("filter = \"a\"\nformat = \"opaque_json\"\nreading = \"humidity\""),
            &["reading does not apply"],
        );
    }

    // No routes at all is a problem: the source would subscribe to nothing.
    #[test]
    fn routes_are_required() {
        let toml = "name = \"m\"\nroutes = []";
        let mut problems = Vec::new();
        parse(toml).validate("sources.m", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("sources.m.routes"), "{problems:?}");
    }

    // Unknown keys are refused, so a typo cannot silently fall back to a default.
    #[test]
    fn unknown_keys_are_refused() {
        use figment::providers::{Format as _, Toml};
        let toml = format!("{BASE}\nqos = 2");
        let result: Result<MqttConfig, _> =
            figment::Figment::new().merge(Toml::string(&toml)).extract();
        assert!(result.is_err());
    }

    // Streams are listed once each, in route order.
    #[test]
    fn streams_of_every_route() {
        let toml = format!(
            "{BASE}\n[[routes]]\nfilter = \"b\"\nstream = \"scans\"\nformat = \"opaque_json\"\n\
             [[routes]]\nfilter = \"c\"\nstream = \"env\"\nformat = \"opaque_json\""
        );
        let streams: Vec<String> = parse(&toml)
            .streams()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(streams, ["env", "scans"]);
    }

    // The password is read from its file at build time and appears in no Debug output.
    #[test]
    fn password_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret-pw\n").unwrap();
        let toml = format!(
            "username = \"edge\"\npassword_file = {:?}\n{BASE}",
            path.display().to_string()
        );
        let config = parse(&toml);
        let source = config.build_source().unwrap();
        assert!(!format!("{source:?} {config:?}").contains("s3cret"));
        let missing = format!("username = \"edge\"\npassword_file = \"/nonexistent/pw\"\n{BASE}");
        let error = parse(&missing).build_source().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/pw"), "{error}");
    }
}

//! Routing, the pure half of the `mqtt` source: which route a topic takes (MQTT filter matching),
//! which sensor id a topic names (template expansion), and what a payload says (a plain number,
//! a JSON object, or opaque JSON). No IO, no clock: the wall-clock time comes in as an argument,
//! so every rule here is tested in memory.

use crate::source::SourceReading;
use sluice_proto::{Payload, Reading, SensorId, StreamName, UnixMillis};
use std::fmt::Write as _;

/// The longest topic filter MQTT allows, bytes.
const FILTER_BYTES_MAX: usize = 65_535;
/// How much of a refused payload a rejection detail quotes, bytes.
const EXCERPT_BYTES_MAX: usize = 64;

/// One level of a topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FilterLevel {
    /// Matches exactly this level.
    Exact(String),
    /// `+`: any one level.
    Single,
    /// `#`: this level and every one below it (only last).
    Multi,
}

/// A parsed MQTT topic filter (`sensors/+/temperature`, `devsecops/#`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    text: String,
    levels: Vec<FilterLevel>,
}

impl Filter {
    /// Parses a filter; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        if text.len() > FILTER_BYTES_MAX {
            return Err(format!("is longer than {FILTER_BYTES_MAX} bytes"));
        }
        if text.contains('\0') {
            return Err("holds a NUL character".to_owned());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (idx, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if idx + 1 == parts.len() => FilterLevel::Multi,
                "#" => return Err("'#' may only be the last level".to_owned()),
                "+" => FilterLevel::Single,
                _ if part.contains(['#', '+']) => {
                    return Err(format!(
                        "level {part:?}: a wildcard must fill a whole level"
                    ))
                }
                _ => FilterLevel::Exact((*part).to_owned()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// The filter as configured (what is sent in SUBSCRIBE).
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `topic` matches, with the MQTT rules: `+` is one level (possibly empty), `#`
    /// is the rest including the parent level, and topics starting with `$` are not matched by
    /// a filter starting with a wildcard.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let wildcard_first = matches!(
            self.levels.first(),
            Some(FilterLevel::Single | FilterLevel::Multi)
        );
        if wildcard_first && topic.starts_with('$') {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in &self.levels {
            match level {
                FilterLevel::Multi => return true,
                FilterLevel::Single => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                FilterLevel::Exact(exact) => {
                    if topic_levels.next() != Some(exact.as_str()) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// How many levels every matching topic has at least, and whether it may have more.
    fn level_bound(&self) -> (usize, bool) {
        match self.levels.last() {
            // `sport/#` matches `sport`: the `#` level may be absent.
            Some(FilterLevel::Multi) => (self.levels.len() - 1, true),
            _ => (self.levels.len(), false),
        }
    }
}

/// One piece of a sensor-id template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Copied as is.
    Literal(String),
    /// `{topic}`: the whole topic.
    Topic,
    /// `{N}`: level N of the topic, from 0.
    Level(usize),
}

/// A sensor-id template: literal text with `{topic}` and `{0}`, `{1}`, … for topic levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// Whether `c` may appear in a sensor id (see `SensorId`).
fn sensor_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| "has a '{' without its '}'".to_owned())?;
                parts.push(Self::placeholder(&after[..end])?);
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if let Some(c) = literal.chars().find(|c| !sensor_id_char(*c)) {
                    return Err(format!(
                        "holds {c:?}, which a sensor id may not (allowed: A-Z a-z 0-9 . _ - : /)"
                    ));
                }
                parts.push(Part::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        Ok(Self { parts })
    }

    fn placeholder(name: &str) -> Result<Part, String> {
        if name == "topic" {
            return Ok(Part::Topic);
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "has {{{name}}}; placeholders are {{topic}} and {{0}}, {{1}}, … (topic levels)"
            ));
        }
        name.parse()
            .map(Part::Level)
            .map_err(|_| format!("level index {name} is too large"))
    }

    /// Checks that every level the template names exists in every topic `filter` matches (or
    /// may exist, when the filter ends with `#`).
    pub(crate) fn check_levels(&self, filter: &Filter) -> Result<(), String> {
        let (n_levels, open) = filter.level_bound();
        for part in &self.parts {
            if let Part::Level(idx) = part {
                if *idx >= n_levels && !open {
                    return Err(format!(
                        "names level {{{idx}}} but topics matching {:?} have {n_levels} levels \
                         ({{0}} to {{{}}})",
                        filter.as_str(),
                        n_levels.saturating_sub(1)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Expands the template for `topic`; the error names a missing level.
    pub(crate) fn expand(&self, topic: &str) -> Result<String, String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Topic => out.push_str(topic),
                Part::Level(idx) => match levels.get(*idx) {
                    Some(level) => out.push_str(level),
                    None => return Err(format!("the topic has no level {{{idx}}}")),
                },
            }
        }
        Ok(out)
    }
}

/// What a numeric value is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// °C.
    Temperature,
    /// % RH.
    Humidity,
    /// A named metric with a unit.
    Metric {
        /// Metric name.
        name: String,
        /// Unit.
        unit: String,
    },
}

impl Kind {
    fn reading(&self, value: f64) -> Reading {
        match self {
            Kind::Temperature => Reading::Temperature { celsius: value },
            Kind::Humidity => Reading::Humidity { percent: value },
            Kind::Metric { name, unit } => Reading::Metric {
                name: name.clone(),
                unit: unit.clone(),
                value,
            },
        }
    }
}

/// How a route reads payloads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Format {
    /// A number as text (`23.5`, surrounding whitespace allowed).
    Number(Kind),
    /// A JSON object with the value (and optionally the time and sensor) in named fields.
    Json {
        /// What the value is.
        kind: Kind,
        /// The field holding the value (a JSON number).
        value_field: String,
        /// The field holding the device time in unix ms, if any.
        time_field: Option<String>,
        /// The field holding the sensor id (overriding the template), if any.
        sensor_field: Option<String>,
    },
    /// Any valid JSON, kept as text.
    OpaqueJson,
}

/// One compiled `[[sources.routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route {
    /// Which topics it takes.
    pub(crate) filter: Filter,
    /// Where their readings go.
    pub(crate) stream: StreamName,
    /// Which sensor a topic names.
    pub(crate) sensor: Template,
    /// How payloads are read.
    pub(crate) format: Format,
}

/// Why a message became no reading: the rejection counter's label and a detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// `malformed_payload` or `unrouted_topic`.
    pub(crate) reason: &'static str,
    /// The topic, what is wrong, and the start of the payload.
    pub(crate) detail: String,
}

/// The routes of one source, tried in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Router {
    routes: Vec<Route>,
    payload_bytes_max: usize,
}

impl Router {
    /// A router over `routes` (the first match wins) refusing payloads above
    /// `payload_bytes_max`.
    pub(crate) fn new(routes: Vec<Route>, payload_bytes_max: usize) -> Self {
        Self {
            routes,
            payload_bytes_max,
        }
    }

    /// Every route's filter, in order (what the source subscribes to).
    pub(crate) fn filters(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.filter.as_str())
    }

    /// Turns one message into a reading, or says why it cannot be one. `wall` is the device
    /// time of readings whose payload carries none.
    pub(crate) fn route(
        &self,
        topic: &str,
        payload: &[u8],
        wall: UnixMillis,
    ) -> Result<SourceReading, Rejection> {
        let Some(route) = self.routes.iter().find(|r| r.filter.matches(topic)) else {
            return Err(Rejection {
                reason: "unrouted_topic",
                detail: format!("topic {topic:?} matches no route"),
            });
        };
        let outcome = if payload.len() > self.payload_bytes_max {
            Err(format!(
                "payload of {} bytes exceeds payload_bytes_max ({})",
                payload.len(),
                self.payload_bytes_max
            ))
        } else {
            route.reading(topic, payload, wall)
        };
        outcome.map_err(|what| Rejection {
            reason: "malformed_payload",
            detail: format!("topic {topic:?}: {what}; payload {}", excerpt(payload)),
        })
    }
}

impl Route {
    fn reading(
        &self,
        topic: &str,
        payload: &[u8],
        wall: UnixMillis,
    ) -> Result<SourceReading, String> {
        let (payload, device_time, sensor) = match &self.format {
            Format::Number(kind) => (
                Payload::Reading(kind.reading(parse_number(payload)?)),
                wall,
                None,
            ),
            Format::Json {
                kind,
                value_field,
                time_field,
                sensor_field,
            } => {
                let fields = parse_object(payload, value_field, time_field, sensor_field)?;
                let time = fields.time.unwrap_or(wall);
                (
                    Payload::Reading(kind.reading(fields.value)),
                    time,
                    fields.sensor,
                )
            }
            Format::OpaqueJson => (Payload::Json(check_json(payload)?), wall, None),
        };
        let sensor = match sensor {
            Some(sensor) => sensor,
            None => self.sensor.expand(topic)?,
        };
        let sensor = SensorId::new(sensor).map_err(|error| error.to_string())?;
        Ok(SourceReading {
            stream: self.stream.clone(),
            sensor,
            device_time,
            payload,
        })
    }
}

/// A number sent as text, as `client.publish(topic, f"{value}")` sends it. Rust's float syntax
/// includes `nan` and `inf` (what Python prints for them); the agent refuses those as not
/// finite, so they are counted there rather than here.
pub(crate) fn parse_number(payload: &[u8]) -> Result<f64, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("payload is empty".to_owned());
    }
    text.parse()
        .map_err(|_| "payload is not a number".to_owned())
}

/// What a JSON object payload holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fields {
    /// The value.
    pub(crate) value: f64,
    /// The device time, when the time field is configured and present.
    pub(crate) time: Option<UnixMillis>,
    /// The sensor id, when the sensor field is configured and present.
    pub(crate) sensor: Option<String>,
}

/// Reads a JSON object: `value_field` must hold a number; `time_field` and `sensor_field`, when
/// configured, may be absent (or null), but when present must hold whole unix milliseconds and
/// a string.
pub(crate) fn parse_object(
    payload: &[u8],
    value_field: &str,
    time_field: &Option<String>,
    sensor_field: &Option<String>,
) -> Result<Fields, String> {
    use serde_json::Value;
    let json: Value = serde_json::from_slice(payload)
        .map_err(|error| format!("payload is not valid JSON: {error}"))?;
    let Value::Object(object) = json else {
        return Err(format!(
            "payload is a JSON {}, not an object",
            json_kind(&json)
        ));
    };
    let value = match object.get(value_field) {
        None => return Err(format!("field {value_field:?} is missing")),
        Some(value) => value.as_f64().ok_or_else(|| {
            format!(
                "field {value_field:?} is a JSON {}, not a number",
                json_kind(value)
            )
        })?,
    };
    let time = match time_field.as_deref().map(|f| (f, object.get(f))) {
        None | Some((_, None | Some(Value::Null))) => None,
        Some((field, Some(time))) => {
            Some(UnixMillis(unix_ms(time).ok_or_else(|| {
                format!("field {field:?} is not whole unix milliseconds")
            })?))
        }
    };
    let sensor = match sensor_field.as_deref().map(|f| (f, object.get(f))) {
        None | Some((_, None | Some(Value::Null))) => None,
        Some((_, Some(Value::String(sensor)))) => Some(sensor.clone()),
        Some((field, Some(other))) => {
            return Err(format!(
                "field {field:?} is a JSON {}, not a string",
                json_kind(other)
            ))
        }
    };
    Ok(Fields {
        value,
        time,
        sensor,
    })
}

fn unix_ms(value: &serde_json::Value) -> Option<i64> {
    if let Some(ms) = value.as_i64() {
        return Some(ms);
    }
    let ms = value.as_f64()?;
    // Whole numbers written as `1.7e12` are fine; fractions and out-of-range values are not.
    let in_range = ms.fract() == 0.0 && ms >= i64::MIN as f64 && ms < i64::MAX as f64;
    in_range.then_some(ms as i64)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks that a payload is one valid JSON value and returns it as text, unchanged.
pub(crate) fn check_json(payload: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|error| format!("payload is not valid JSON: {error}"))?;
    Ok(text.to_owned())
}

/// The start of a payload for a log line: quoted, escaped, and cut at `EXCERPT_BYTES_MAX`.
fn excerpt(payload: &[u8]) -> String {
    let cut = payload.len().min(EXCERPT_BYTES_MAX);
    let mut out = format!("{:?}", String::from_utf8_lossy(&payload[..cut]));
    if cut < payload.len() {
        let _ = write!(out, "… ({} bytes)", payload.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: UnixMillis = UnixMillis(1_700_000_000_000);

    fn stream() -> StreamName {
        StreamName::new("env").unwrap()
    }

    fn route(filter: &str, sensor: &str, format: Format) -> Route {
        let filter = Filter::parse(filter).unwrap();
        let sensor = Template::parse(sensor).unwrap();
        sensor.check_levels(&filter).unwrap();
        Route {
            filter,
            stream: stream(),
            sensor,
            format,
        }
    }

    fn json(kind: Kind, time: Option<&str>, sensor: Option<&str>) -> Format {
        Format::Json {
            kind,
            value_field: "value".to_owned(),
            time_field: time.map(str::to_owned),
            sensor_field: sensor.map(str::to_owned),
        }
    }

    fn check_match(filter: &str, topic: &str, expected: bool) {
        let parsed = Filter::parse(filter).unwrap();
        assert_eq!(parsed.matches(topic), expected, "{filter} vs {topic}");
    }

    // Filter matching follows MQTT 3.1.1 section 4.7: `+` is one level (possibly empty), `#`
    // includes the parent level, and `$` topics need an explicit first level.
    #[test]
    fn filter_exact() {
        check_match("a/b", "a/b", true);
        check_match("a/b", "a/b/c", false);
        check_match("a/b", "a", false);
        check_match("a/b", "a/B", false);
    }

    #[test]
    fn filter_single_level() {
        check_match("a/+/c", "a/b/c", true);
        check_match("a/+/c", "a//c", true);
        check_match("a/+/c", "a/b/d", false);
        check_match("a/+", "a/b/c", false);
        check_match("+", "a", true);
        check_match("+/+", "/a", true);
    }

    #[test]
    fn filter_multi_level() {
        check_match("a/#", "a", true);
        check_match("a/#", "a/b/c", true);
        check_match("a/#", "b/a", false);
        check_match("#", "x/y", true);
        check_match("a/+/#", "a/b", true);
    }

    #[test]
    fn filter_dollar_topics() {
        check_match("#", "$SYS/broker/load", false);
        check_match("+/broker/load", "$SYS/broker/load", false);
        check_match("$SYS/#", "$SYS/broker/load", true);
    }

    fn check_filter_error(filter: &str, expected: &str) {
        let error = Filter::parse(filter).unwrap_err();
        assert!(error.contains(expected), "{filter}: {error}");
    }

    // Filters a broker would refuse are refused at configuration time, with the reason.
    #[test]
    fn filter_errors() {
        check_filter_error("", "empty");
        check_filter_error("a/#/b", "last level");
        check_filter_error("a/b#", "whole level");
        check_filter_error("a/+b", "whole level");
        check_filter_error("a\0b", "NUL");
    }

    fn check_expand(filter: &str, template: &str, topic: &str, expected: Result<&str, &str>) {
        let filter = Filter::parse(filter).unwrap();
        let template = Template::parse(template).unwrap();
        template.check_levels(&filter).unwrap();
        match (template.expand(topic), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{topic}: got {got:?}, want {want:?}"),
        }
    }

    // Templates copy literals and put in the whole topic or single levels, counted from 0.
    #[test]
    fn template_expansion() {
        check_expand("a/+/c", "{topic}", "a/b/c", Ok("a/b/c"));
        check_expand("a/+/c", "room:{1}", "a/kitchen/c", Ok("room:kitchen"));
        check_expand("a/+/+", "{2}.{1}", "a/x/y", Ok("y.x"));
        check_expand("a/b", "fixed-id", "a/b", Ok("fixed-id"));
        check_expand("a/#", "pi/{topic}", "a", Ok("pi/a"));
        check_expand("a/#", "{0}-{3}", "a/b/c/d", Ok("a-d"));
        check_expand("a/#", "{0}-{3}", "a/b", Err("no level {3}"));
    }

    fn check_template_error(filter: &str, template: &str, expected: &str) {
        let filter = Filter::parse(filter).unwrap();
        let error = Template::parse(template)
            .and_then(|t| t.check_levels(&filter))
            .unwrap_err();
        assert!(error.contains(expected), "{template}: {error}");
    }

    // Bad templates are configuration errors: unknown placeholders, levels the filter cannot
    // have, characters a sensor id cannot hold.
    #[test]
    fn template_errors() {
        check_template_error("a/+", "", "empty");
        check_template_error("a/+", "{2}", "names level {2}");
        check_template_error("a/+", "{name}", "placeholders are");
        check_template_error("a/+", "{}", "placeholders are");
        check_template_error("a/+", "x{1", "without its '}'");
        check_template_error("a/+", "room {1}", "' '");
        check_template_error("a/+", "x}", "'}'");
        check_template_error("a/+", "{99999999999999999999999}", "too large");
    }

    fn check_number(payload: &str, expected: Result<f64, &str>) {
        match (parse_number(payload.as_bytes()), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.to_bits(), want.to_bits(), "{payload:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{payload:?}: {got}"),
            (got, want) => panic!("{payload:?}: got {got:?}, want {want:?}"),
        }
    }

    // Numbers arrive as Python's f"{value}" prints them; whitespace around them is trimmed.
    #[test]
    fn number_payloads() {
        check_number("23.5", Ok(23.5));
        check_number("23", Ok(23.0));
        check_number("-4.25", Ok(-4.25));
        check_number(" 21.0\n", Ok(21.0));
        check_number("1e3", Ok(1000.0));
        check_number("inf", Ok(f64::INFINITY));
        check_number("", Err("empty"));
        check_number("  ", Err("empty"));
        check_number("23.5C", Err("not a number"));
        check_number("twenty", Err("not a number"));
        check_number("1,5", Err("not a number"));
        assert!(parse_number(b"nan").unwrap().is_nan());
        assert!(parse_number(&[0xff, 0x31]).unwrap_err().contains("UTF-8"));
    }

    fn check_object(
        payload: &str,
        time: Option<&str>,
        sensor: Option<&str>,
        expected: Result<Fields, &str>,
    ) {
        let time = time.map(str::to_owned);
        let sensor = sensor.map(str::to_owned);
        match (
            parse_object(payload.as_bytes(), "value", &time, &sensor),
            expected,
        ) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{payload}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{payload}: {got}"),
            (got, want) => panic!("{payload}: got {got:?}, want {want:?}"),
        }
    }

    fn fields(value: f64, time: Option<i64>, sensor: Option<&str>) -> Fields {
        Fields {
            value,
            time: time.map(UnixMillis),
            sensor: sensor.map(str::to_owned),
        }
    }

    // JSON objects: the value must be a number; the time and sensor fields may be absent, but
    // when present must be whole unix milliseconds and a string.
    #[test]
    fn object_payloads() {
        check_object(
            r#"{"value": 21.5}"#,
            None,
            None,
            Ok(fields(21.5, None, None)),
        );
        check_object(
            r#"{"value": 3, "extra": [1]}"#,
            None,
            None,
            Ok(fields(3.0, None, None)),
        );
        check_object(
            r#"{"value": 1, "ts": 1700000000123}"#,
            Some("ts"),
            None,
            Ok(fields(1.0, Some(1_700_000_000_123), None)),
        );
        check_object(
            r#"{"value": 1, "ts": 1.7e12}"#,
            Some("ts"),
            None,
            Ok(fields(1.0, Some(1_700_000_000_000), None)),
        );
        check_object(
            r#"{"value": 1}"#,
            Some("ts"),
            Some("id"),
            Ok(fields(1.0, None, None)),
        );
        check_object(
            r#"{"value": 1, "ts": null, "id": "s-1"}"#,
            Some("ts"),
            Some("id"),
            Ok(fields(1.0, None, Some("s-1"))),
        );
        check_object(
            r#"{"value": "21.5"}"#,
            None,
            None,
            Err("string, not a number"),
        );
        check_object(r#"{"temp": 21.5}"#, None, None, Err("\"value\" is missing"));
        check_object(
            r#"{"value": 1, "ts": "now"}"#,
            Some("ts"),
            None,
            Err("unix milliseconds"),
        );
        check_object(
            r#"{"value": 1, "ts": 1.5}"#,
            Some("ts"),
            None,
            Err("unix milliseconds"),
        );
        check_object(
            r#"{"value": 1, "id": 7}"#,
            None,
            Some("id"),
            Err("number, not a string"),
        );
        check_object(r#"[1, 2]"#, None, None, Err("array, not an object"));
        check_object(r#"{"value": 1"#, None, None, Err("not valid JSON"));
        check_object(r#"{"value": 1} x"#, None, None, Err("not valid JSON"));
    }

    // Opaque JSON is checked for validity and kept byte for byte.
    #[test]
    fn opaque_json_payloads() {
        assert_eq!(
            check_json(br#" {"a": [1, 2]} "#).unwrap(),
            r#" {"a": [1, 2]} "#
        );
        assert_eq!(check_json(b"42").unwrap(), "42");
        assert!(check_json(b"{").unwrap_err().contains("not valid JSON"));
        assert!(check_json(b"").unwrap_err().contains("not valid JSON"));
        assert!(check_json(b"{} {}").unwrap_err().contains("not valid JSON"));
    }

    fn router() -> Router {
        let metric = Kind::Metric {
            name: "door_open".to_owned(),
            unit: "bool".to_owned(),
        };
        Router::new(
            vec![
                route(
                    "devsecops/sensors/temperature",
                    "pi1/{2}",
                    Format::Number(Kind::Temperature),
                ),
                route(
                    "rooms/+/humidity",
                    "{1}:rh",
                    json(Kind::Humidity, Some("ts"), Some("id")),
                ),
                route("doors/+", "door/{1}", Format::Number(metric)),
                route("scans/#", "{topic}", Format::OpaqueJson),
                route("#", "fallback", Format::Number(Kind::Temperature)),
            ],
            64,
        )
    }

    fn check_route(
        topic: &str,
        payload: &str,
        expected: Result<(&str, i64, Payload), (&str, &str)>,
    ) {
        match (router().route(topic, payload.as_bytes(), WALL), expected) {
            (Ok(got), Ok((sensor, time, payload))) => {
                assert_eq!(got.stream, stream());
                assert_eq!(got.sensor.as_str(), sensor);
                assert_eq!(got.device_time, UnixMillis(time));
                assert_eq!(got.payload, payload);
            }
            (Err(got), Err((reason, detail))) => {
                assert_eq!(got.reason, reason, "{}", got.detail);
                assert!(got.detail.contains(detail), "{}", got.detail);
                assert!(got.detail.contains(topic), "{}", got.detail);
            }
            (got, want) => panic!("{topic} {payload:?}: got {got:?}, want {want:?}"),
        }
    }

    fn temperature(celsius: f64) -> Payload {
        Payload::Reading(Reading::Temperature { celsius })
    }

    // Whole messages: the first matching route decides stream, sensor, time and payload; bad
    // payloads and unknown topics are rejected with a reason and a detail naming the topic.
    #[test]
    fn routing() {
        let wall = WALL.0;
        check_route(
            "devsecops/sensors/temperature",
            "23.5",
            Ok(("pi1/temperature", wall, temperature(23.5))),
        );
        check_route(
            "rooms/lab/humidity",
            r#"{"value": 40, "ts": 1700000000999}"#,
            Ok((
                "lab:rh",
                1_700_000_000_999,
                Payload::Reading(Reading::Humidity { percent: 40.0 }),
            )),
        );
        check_route(
            "rooms/lab/humidity",
            r#"{"value": 40, "id": "hall:rh"}"#,
            Ok((
                "hall:rh",
                wall,
                Payload::Reading(Reading::Humidity { percent: 40.0 }),
            )),
        );
        let door = Payload::Reading(Reading::Metric {
            name: "door_open".to_owned(),
            unit: "bool".to_owned(),
            value: 1.0,
        });
        check_route("doors/front", "1", Ok(("door/front", wall, door)));
        check_route(
            "scans/ci/7",
            r#"{"cve": 1}"#,
            Ok((
                "scans/ci/7",
                wall,
                Payload::Json(r#"{"cve": 1}"#.to_owned()),
            )),
        );
        check_route("other/topic", "5", Ok(("fallback", wall, temperature(5.0))));
        check_route(
            "devsecops/sensors/temperature",
            "hot",
            Err(("malformed_payload", "not a number")),
        );
        check_route(
            "rooms/lab/humidity",
            "{}",
            Err(("malformed_payload", "missing")),
        );
        check_route(
            "rooms/lab/humidity",
            r#"{"value": 1, "id": "a b"}"#,
            Err(("malformed_payload", "sensor id")),
        );
        check_route(
            "doors/front door",
            "1",
            Err(("malformed_payload", "sensor id")),
        );
        check_route("scans/x", "{", Err(("malformed_payload", "not valid JSON")));
        check_route(
            "scans/x",
            &"1".repeat(65),
            Err(("malformed_payload", "exceeds payload_bytes_max (64)")),
        );
        check_route(
            "$SYS/load",
            "1",
            Err(("unrouted_topic", "matches no route")),
        );
    }

    // Rejection details quote at most the start of a payload, escaped.
    #[test]
    fn excerpts() {
        assert_eq!(excerpt(b"ab\n"), r#""ab\n""#);
        let long = excerpt(&[b'x'; 100]);
        assert!(long.ends_with("… (100 bytes)"), "{long}");
        assert!(
            long.starts_with(&format!("\"{}\"", "x".repeat(64))),
            "{long}"
        );
    }
}

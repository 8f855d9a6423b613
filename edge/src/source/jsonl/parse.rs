//! Turning one line into a reading: UTF-8 and JSON checks, the sensor id and the device time.
//! Pure functions; the wall clock comes in as a value.
//!
//! Any JSON value is accepted (an object, an array, a string …) and stored as given, trimmed of
//! surrounding JSON whitespace. `sensor_field` and `time_field` name top-level fields of an
//! object; when one is missing or unusable the line still becomes a reading, with the fixed
//! sensor id or the agent's clock, and the parser says so in a note.

use super::lines::LineAt;
use crate::source::SourceReading;
use serde_json::Value;
use sluice_proto::{Payload, SensorId, StreamName, UnixMillis};

/// The rejection reason of a line that is not UTF-8 or not JSON.
pub(crate) const MALFORMED_JSON: &str = "malformed_json";

/// What became of one line.
#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    /// Only whitespace: skipped silently.
    Blank,
    /// A reading.
    Reading {
        /// The reading.
        reading: SourceReading,
        /// Why a configured field was not used, if it was not.
        note: Option<String>,
    },
    /// Not a reading.
    Rejected {
        /// The counter label.
        reason: &'static str,
        /// What was wrong, naming the line and input.
        detail: String,
    },
}

/// Parses the lines of one source.
#[derive(Debug, Clone)]
pub(crate) struct LineParser {
    /// The stream readings go to.
    pub(crate) stream: StreamName,
    /// The sensor id of lines without a usable `sensor_field`.
    pub(crate) sensor: SensorId,
    /// A top-level string field holding the line's sensor id.
    pub(crate) sensor_field: Option<String>,
    /// A top-level field holding the line's time (unix ms, or an RFC 3339 string).
    pub(crate) time_field: Option<String>,
}

impl LineParser {
    /// Parses one line (without its newline) found at `at` of `input`; `wall` is the time of
    /// lines without a usable `time_field`.
    pub(crate) fn parse(
        &self,
        bytes: Vec<u8>,
        at: LineAt,
        input: &str,
        wall: UnixMillis,
    ) -> Parsed {
        let text = match String::from_utf8(trim_json_whitespace(bytes)) {
            Ok(text) => text,
            Err(e) => {
                return Parsed::Rejected {
                    reason: MALFORMED_JSON,
                    detail: format!("{at} of {input} is not UTF-8: {}", e.utf8_error()),
                }
            }
        };
        if text.is_empty() {
            return Parsed::Blank;
        }
        let fields = if self.sensor_field.is_some() || self.time_field.is_some() {
            serde_json::from_str::<Value>(&text).map(Some)
        } else {
            // Only a syntax check: nothing is built.
            serde_json::from_str::<serde::de::IgnoredAny>(&text).map(|_| None)
        };
        let value = match fields {
            Ok(value) => value,
            Err(e) => {
                return Parsed::Rejected {
                    reason: MALFORMED_JSON,
                    detail: format!("{at} of {input}: {e}"),
                }
            }
        };
        let object = value.as_ref().and_then(Value::as_object);
        let mut notes = Vec::new();
        let sensor = match field(object, &self.sensor_field) {
            None => self.sensor.clone(),
            Some((name, found)) => {
                match found.and_then(Value::as_str).map(SensorId::new) {
                    Some(Ok(sensor)) => sensor,
                    _ => {
                        notes.push(format!("sensor_field {name:?} is missing or not a valid sensor id, so {} was used", self.sensor));
                        self.sensor.clone()
                    }
                }
            }
        };
        let device_time = match field(object, &self.time_field) {
            None => wall,
            Some((name, found)) => match found.and_then(time_of) {
                Some(time) => time,
                None => {
                    notes.push(format!("time_field {name:?} is missing or neither unix milliseconds nor an RFC 3339 time, so the agent's clock was used"));
                    wall
                }
            },
        };
        let note = (!notes.is_empty()).then(|| format!("{at} of {input}: {}", notes.join("; ")));
        Parsed::Reading {
            reading: SourceReading {
                stream: self.stream.clone(),
                sensor,
                device_time,
                payload: Payload::Json(text),
            },
            note,
        }
    }
}

/// A configured field's name and its value in `object`, if any; `None` if it is not configured.
fn field<'v>(
    object: Option<&'v serde_json::Map<String, Value>>,
    name: &'v Option<String>,
) -> Option<(&'v str, Option<&'v Value>)> {
    let name = name.as_deref()?;
    Some((name, object.and_then(|o| o.get(name))))
}

/// Drops the JSON whitespace (space, tab, CR, LF) around a line, in place.
fn trim_json_whitespace(mut bytes: Vec<u8>) -> Vec<u8> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(0, |idx| idx + 1);
    bytes.truncate(end);
    let start = bytes.iter().position(|b| !is_space(b)).unwrap_or(end);
    bytes.drain(..start);
    bytes
}

/// The time a field's value gives: an integer (or finite float, truncated) of unix
/// milliseconds, or an RFC 3339 string.
fn time_of(value: &Value) -> Option<UnixMillis> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                let f = n.as_f64()?.trunc();
                // The float range checks keep the cast exact; `as` saturates anyway.
                (f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
            })
            .map(UnixMillis),
        Value::String(s) => rfc3339_ms(s).map(UnixMillis),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time such as `2024-05-01T12:00:00Z`,
/// `2024-05-01t12:00:00.123456789+02:00` or `2024-05-01 12:00:00-05:30`; `None` if it is not
/// one. Fractions beyond milliseconds are truncated; a leap second (`:60`) counts as the first
/// second of the next minute.
pub(crate) fn rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(idx, c)| b.get(idx) != Some(&c))
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let mut idx = 19;
    let mut millis = 0;
    if b.get(idx) == Some(&b'.') {
        let n_digits = b[idx + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if n_digits == 0 {
            return None;
        }
        for k in 0..3 {
            let digit = if k < n_digits {
                number(idx + 1 + k, 1)?
            } else {
                0
            };
            millis = millis * 10 + digit;
        }
        idx += 1 + n_digits;
    }
    let offset_minutes = match b.get(idx..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(idx + 1, 2)?, number(idx + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return None,
    };
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: UnixMillis = UnixMillis(42);

    fn parser(sensor_field: Option<&str>, time_field: Option<&str>) -> LineParser {
        LineParser {
            stream: StreamName::new("security").expect("stream name"),
            sensor: SensorId::new("scanner").expect("sensor id"),
            sensor_field: sensor_field.map(str::to_owned),
            time_field: time_field.map(str::to_owned),
        }
    }

    /// Parses `line` (as line 7) and compares a summary: `"sensor@time payload"` plus
    /// `" (note)"` when a field was unusable, `"blank"`, or `"reason: detail"`.
    fn check(parser: &LineParser, line: &[u8], expected: &str) {
        let at = LineAt {
            number: Some(7),
            offset: 70,
        };
        let found = match parser.parse(line.to_vec(), at, "in.jsonl", WALL) {
            Parsed::Blank => "blank".to_owned(),
            Parsed::Rejected { reason, detail } => format!("{reason}: {detail}"),
            Parsed::Reading { reading, note } => {
                let Payload::Json(text) = &reading.payload else {
                    panic!("not a JSON payload: {reading:?}");
                };
                let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                format!(
                    "{}@{} {text}{note}",
                    reading.sensor.as_str(),
                    reading.device_time.0
                )
            }
        };
        assert_eq!(found, expected);
    }

    // Any JSON value is stored as given, trimmed; the fixed sensor and the wall clock apply.
    #[test]
    fn any_json_value() {
        let p = parser(None, None);
        check(&p, br#"  {"a": [1, 2]} "#, r#"scanner@42 {"a": [1, 2]}"#);
        check(&p, b"\t[1,2]\r", "scanner@42 [1,2]");
        check(&p, b"\"text\"", "scanner@42 \"text\"");
        check(&p, b"17", "scanner@42 17");
    }

    // Lines of whitespace are blank; others must be one whole JSON value.
    #[test]
    fn blank_and_malformed() {
        let p = parser(None, None);
        check(&p, b"", "blank");
        check(&p, b" \t\r", "blank");
        check(
            &p,
            b"{\"a\":",
            "malformed_json: line 7 of in.jsonl: EOF while parsing a value at line 1 column 5",
        );
        check(
            &p,
            b"{} {}",
            "malformed_json: line 7 of in.jsonl: trailing characters at line 1 column 4",
        );
        check(&p, b"\xff{}", "malformed_json: line 7 of in.jsonl is not UTF-8: invalid utf-8 sequence of 1 bytes from index 0");
    }

    // A Falco event: sensor from `hostname`, time from the RFC 3339 `time` (nanoseconds cut
    // to milliseconds).
    #[test]
    fn falco_event_fields() {
        let p = parser(Some("hostname"), Some("time"));
        let line = br#"{"hostname":"pi-7","rule":"Terminal shell in container","priority":"Warning","time":"2024-02-29T12:34:56.789123456Z","output_fields":{"proc.name":"bash"}}"#;
        let expected = format!("pi-7@1709210096789 {}", String::from_utf8_lossy(line));
        check(&p, line, &expected);
    }

    // Unix milliseconds as an integer or a float.
    #[test]
    fn time_as_number() {
        let p = parser(None, Some("ts"));
        check(
            &p,
            br#"{"ts":1700000000123}"#,
            r#"scanner@1700000000123 {"ts":1700000000123}"#,
        );
        check(
            &p,
            br#"{"ts":1700000000123.9}"#,
            r#"scanner@1700000000123 {"ts":1700000000123.9}"#,
        );
    }

    // Unusable fields fall back to the fixed sensor and the wall clock, with a note.
    #[test]
    fn unusable_fields_fall_back() {
        let p = parser(Some("host"), Some("ts"));
        check(
            &p,
            br#"{"host":"a b","ts":"yesterday"}"#,
            r#"scanner@42 {"host":"a b","ts":"yesterday"} (line 7 of in.jsonl: sensor_field "host" is missing or not a valid sensor id, so scanner was used; time_field "ts" is missing or neither unix milliseconds nor an RFC 3339 time, so the agent's clock was used)"#,
        );
        check(
            &p,
            b"[1]",
            r#"scanner@42 [1] (line 7 of in.jsonl: sensor_field "host" is missing or not a valid sensor id, so scanner was used; time_field "ts" is missing or neither unix milliseconds nor an RFC 3339 time, so the agent's clock was used)"#,
        );
        let p = parser(Some("host"), None);
        check(
            &p,
            br#"{"host":1}"#,
            r#"scanner@42 {"host":1} (line 7 of in.jsonl: sensor_field "host" is missing or not a valid sensor id, so scanner was used)"#,
        );
    }

    fn check_time(text: &str, expected: Option<i64>) {
        assert_eq!(rfc3339_ms(text), expected, "{text}");
    }

    // RFC 3339 times: epoch, fractions, offsets, the separators RFC 3339 allows.
    #[test]
    fn rfc3339_valid() {
        check_time("1970-01-01T00:00:00Z", Some(0));
        check_time("1969-12-31T23:59:59.999Z", Some(-1));
        check_time("2024-02-29T12:34:56Z", Some(1_709_210_096_000));
        check_time("2024-02-29t12:34:56.7z", Some(1_709_210_096_700));
        check_time("2024-02-29 14:34:56.789+02:00", Some(1_709_210_096_789));
        check_time("2024-02-29T07:04:56-05:30", Some(1_709_210_096_000));
        check_time("2016-12-31T23:59:60Z", Some(1_483_228_800_000));
        check_time("2000-03-01T00:00:00Z", Some(951_868_800_000));
    }

    // Anything else is refused, never misread.
    #[test]
    fn rfc3339_invalid() {
        for text in [
            "",
            "2024-02-29",
            "2024-02-29T12:34:56",
            "2023-02-29T12:34:56Z",
            "2024-13-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+2:00",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00Zjunk",
            "2024-01-01X00:00:00Z",
            "+024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.1234567€Z",
        ] {
            check_time(text, None);
        }
    }
}

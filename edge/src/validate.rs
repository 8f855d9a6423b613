//! Validation at the edge: per-source plausibility bounds, a per-sensor rate limit and duplicate
//! suppression. A refused reading is counted by reason and never spooled, so it gets no seq and
//! leaves no gap.
//!
//! [`Validator`] is a sans-IO core: time comes in as `now`; it keeps per-sensor state bounded by
//! `sensors_max` (the oldest-touched sensor's state is forgotten beyond it).

use crate::reading::{Refusal, SourceReading};
use serde::{Deserialize, Serialize};
use sluice_proto::{Payload, Reading, SensorId};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// An inclusive range of plausible values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Lowest plausible value.
    pub min: f64,
    /// Highest plausible value.
    pub max: f64,
}

impl Range {
    /// `min..=max`.
    pub const fn new(min: f64, max: f64) -> Self {
        Self { min, max }
    }
}

/// The `validation` table of a source. Unset bounds fall back to the source's own defaults
/// (a DHT22 knows its range); unset limits are off.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Plausible temperatures, °C.
    pub temperature: Option<Range>,
    /// Plausible relative humidity, %.
    pub humidity: Option<Range>,
    /// Plausible values of named metrics, by metric name.
    pub metrics: BTreeMap<String, Range>,
    /// Readings per second one sensor may send (a token bucket of `burst_max`); unset is no
    /// limit.
    pub readings_per_second_max: Option<f64>,
    /// Readings a sensor may send at once above its rate.
    pub burst_max: Option<u32>,
    /// A reading equal to one of the same sensor (same device time and payload) seen within
    /// this window is a duplicate (a redelivery) and is dropped; unset turns this off.
    pub duplicate_window_ms: Option<u64>,
}

impl ValidationConfig {
    /// This table with `defaults` filling the bounds it leaves unset.
    pub fn with_defaults(&self, defaults: &ValidationConfig) -> ValidationConfig {
        let mut merged = self.clone();
        merged.temperature = merged.temperature.or(defaults.temperature);
        merged.humidity = merged.humidity.or(defaults.humidity);
        for (name, range) in &defaults.metrics {
            merged.metrics.entry(name.clone()).or_insert(*range);
        }
        merged
    }

    /// Adds every problem to `problems`, prefixed by `at` (`sources.<name>.validation`).
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        let ranges = [
            ("temperature", self.temperature),
            ("humidity", self.humidity),
        ];
        let named = self.metrics.iter().map(|(n, r)| (n.as_str(), Some(*r)));
        for (what, range) in ranges.into_iter().chain(named) {
            if let Some(r) = range {
                if !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max) {
                    problems.push(format!(
                        "{at}.{what}: min {} and max {} must be finite with min <= max",
                        r.min, r.max
                    ));
                }
            }
        }
        if let Some(rate) = self.readings_per_second_max {
            if !(rate.is_finite() && rate > 0.0) {
                problems.push(format!(
                    "{at}.readings_per_second_max must be positive, got {rate}"
                ));
            }
        }
        if self.burst_max == Some(0) {
            problems.push(format!("{at}.burst_max must be positive"));
        }
        if self.duplicate_window_ms == Some(0) {
            problems.push(format!(
                "{at}.duplicate_window_ms must be positive (leave it out to turn it off)"
            ));
        }
    }
}

/// Recent readings remembered per sensor for duplicate suppression.
const DUPLICATES_PER_SENSOR_MAX: usize = 64;

#[derive(Debug)]
struct SensorState {
    tokens: f64,
    refilled: Instant,
    recent: VecDeque<(Instant, i64, Payload)>,
    touched: u64,
}

/// The validation core of one source.
#[derive(Debug)]
pub struct Validator {
    config: ValidationConfig,
    sensors: BTreeMap<SensorId, SensorState>,
    sensors_max: usize,
    touches: u64,
}

impl Validator {
    /// A validator with `config` (defaults already merged) tracking at most `sensors_max`
    /// sensors' rate and duplicate state.
    pub fn new(config: ValidationConfig, sensors_max: u32) -> Self {
        Self {
            config,
            sensors: BTreeMap::new(),
            sensors_max: sensors_max.max(1) as usize,
            touches: 0,
        }
    }

    /// Judges one reading at `now`.
    pub fn check(&mut self, now: Instant, reading: &SourceReading) -> Result<(), Refusal> {
        self.check_value(&reading.payload)?;
        let config = &self.config;
        if config.readings_per_second_max.is_none() && config.duplicate_window_ms.is_none() {
            return Ok(());
        }
        self.touches += 1;
        let touches = self.touches;
        if !self.sensors.contains_key(&reading.sensor) && self.sensors.len() >= self.sensors_max {
            self.forget_least_recent();
        }
        let burst = f64::from(self.config.burst_max.unwrap_or(1).max(1));
        let state = self
            .sensors
            .entry(reading.sensor.clone())
            .or_insert_with(|| SensorState {
                tokens: burst,
                refilled: now,
                recent: VecDeque::new(),
                touched: touches,
            });
        state.touched = touches;
        if let Some(window_ms) = self.config.duplicate_window_ms {
            let window = Duration::from_millis(window_ms);
            while state
                .recent
                .front()
                .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > window)
            {
                state.recent.pop_front();
            }
            let time = reading.device_time.0;
            if state
                .recent
                .iter()
                .any(|(_, t, p)| *t == time && *p == reading.payload)
            {
                return Err(Refusal::Duplicate {
                    sensor: reading.sensor.to_string(),
                });
            }
        }
        if let Some(rate) = self.config.readings_per_second_max {
            let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(burst);
            state.refilled = now;
            if state.tokens < 1.0 {
                return Err(Refusal::RateLimited {
                    sensor: reading.sensor.to_string(),
                    per_second_max: rate,
                });
            }
            state.tokens -= 1.0;
        }
        if self.config.duplicate_window_ms.is_some() {
            if state.recent.len() >= DUPLICATES_PER_SENSOR_MAX {
                state.recent.pop_front();
            }
            state
                .recent
                .push_back((now, reading.device_time.0, reading.payload.clone()));
        }
        Ok(())
    }

    fn check_value(&self, payload: &Payload) -> Result<(), Refusal> {
        let Payload::Reading(reading) = payload else {
            return Ok(());
        };
        let (what, range) = match reading {
            Reading::Temperature { .. } => ("temperature", self.config.temperature),
            Reading::Humidity { .. } => ("humidity", self.config.humidity),
            Reading::Metric { name, .. } => ("metric", self.config.metrics.get(name).copied()),
        };
        let value = reading.value();
        if !value.is_finite() {
            return Err(Refusal::NotFinite { what });
        }
        // The node refuses what this refuses; a refused record would stay spooled forever.
        reading
            .check()
            .map_err(|reason| Refusal::Invalid { reason })?;
        match range {
            Some(r) if value < r.min || value > r.max => Err(Refusal::OutOfRange {
                what,
                value: value.to_string(),
                min: r.min.to_string(),
                max: r.max.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn forget_least_recent(&mut self) {
        let oldest = self
            .sensors
            .iter()
            .min_by_key(|(_, s)| s.touched)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.sensors.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{StreamName, UnixMillis};

    fn reading(sensor: &str, time: i64, payload: Payload) -> SourceReading {
        SourceReading {
            stream: StreamName::new("sensors").unwrap_or_else(|e| panic!("{e}")),
            sensor: SensorId::new(sensor).unwrap_or_else(|e| panic!("{e}")),
            device_time: UnixMillis(time),
            payload,
        }
    }

    fn temp(celsius: f64) -> Payload {
        Payload::Reading(Reading::Temperature { celsius })
    }

    fn check(config: ValidationConfig, inputs: &[(u64, &str, i64, Payload)]) -> Vec<&'static str> {
        // Any origin will do: the core only measures differences from it.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let mut validator = Validator::new(config, 2);
        inputs
            .iter()
            .map(|(ms, sensor, time, payload)| {
                let now = start + Duration::from_millis(*ms);
                match validator.check(now, &reading(sensor, *time, payload.clone())) {
                    Ok(()) => "ok",
                    Err(refusal) => refusal.label(),
                }
            })
            .collect()
    }

    #[test]
    fn bounds_refuse_out_of_range_and_non_finite_values() {
        // Checks plausibility: inside passes, outside and NaN are refused with their reason.
        let config = ValidationConfig {
            temperature: Some(Range::new(-40.0, 80.0)),
            ..Default::default()
        };
        let got = check(
            config,
            &[
                (0, "t", 1, temp(21.5)),
                (0, "t", 2, temp(80.1)),
                (0, "t", 3, temp(f64::NAN)),
                (0, "t", 4, temp(-40.0)),
            ],
        );
        assert_eq!(got, ["ok", "out_of_range", "not_finite", "ok"]);
    }

    #[test]
    fn rate_limit_refills_over_time() {
        // Checks the token bucket: a burst of 2, then one reading per 500 ms at 2/s.
        let config = ValidationConfig {
            readings_per_second_max: Some(2.0),
            burst_max: Some(2),
            ..Default::default()
        };
        let got = check(
            config,
            &[
                (0, "s", 1, temp(1.0)),
                (0, "s", 2, temp(1.0)),
                (0, "s", 3, temp(1.0)),
                (500, "s", 4, temp(1.0)),
                (600, "s", 5, temp(1.0)),
            ],
        );
        assert_eq!(got, ["ok", "ok", "rate_limited", "ok", "rate_limited"]);
    }

    #[test]
    fn duplicates_are_dropped_within_the_window_only() {
        // Checks duplicate suppression: same sensor, time and payload within the window.
        let config = ValidationConfig {
            duplicate_window_ms: Some(1000),
            ..Default::default()
        };
        let got = check(
            config,
            &[
                (0, "s", 7, temp(1.0)),
                (10, "s", 7, temp(1.0)),
                (20, "s", 8, temp(1.0)),
                (30, "other", 7, temp(1.0)),
                (2000, "s", 7, temp(1.0)),
            ],
        );
        assert_eq!(got, ["ok", "duplicate", "ok", "ok", "ok"]);
    }

    #[test]
    fn sensor_state_is_bounded() {
        // Checks that a third sensor evicts the least recently seen one (sensors_max = 2), so
        // its duplicate is no longer recognised.
        let config = ValidationConfig {
            duplicate_window_ms: Some(10_000),
            ..Default::default()
        };
        let got = check(
            config,
            &[
                (0, "a", 1, temp(1.0)),
                (1, "b", 1, temp(1.0)),
                (2, "c", 1, temp(1.0)),
                (3, "a", 1, temp(1.0)),
                (4, "c", 1, temp(1.0)),
            ],
        );
        assert_eq!(got, ["ok", "ok", "ok", "ok", "duplicate"]);
    }

    #[test]
    fn invalid_config_lists_every_problem() {
        // Checks that validation reports each bad key.
        let config = ValidationConfig {
            temperature: Some(Range::new(5.0, 1.0)),
            readings_per_second_max: Some(0.0),
            burst_max: Some(0),
            duplicate_window_ms: Some(0),
            ..Default::default()
        };
        let mut problems = Vec::new();
        config.validate("sources.x.validation", &mut problems);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}

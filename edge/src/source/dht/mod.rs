//! The `dht` source: a DHT22 (AM2302) or DHT11 temperature and humidity sensor on one GPIO pin
//! of a Raspberry Pi. Every `interval_ms` it bit-bangs one read (the start signal, then 40 bits)
//! on the blocking pool and offers two readings, `<sensor>/temperature` and `<sensor>/humidity`,
//! stamped with the agent's wall clock.
//!
//! A failed read (no answer, a bad checksum, a pin error) is normal on a Linux host that can be
//! preempted mid-transmission: it is counted with [`SourceSink::reject`] under `dht_timeout`,
//! `dht_checksum` or `dht_pin` and retried up to `read_attempts_max` times, each retry waiting
//! the model's minimum interval. Only `failed_reads_max` consecutive cycles in which every
//! attempt failed make the source fail, so that the supervisor restarts it and the pin is
//! opened again.
//!
//! The read path ([`read_sensor`], [`DhtSource`]) is generic over the embedded-hal pin and
//! delay, so tests (and the simulator) drive it with a fake line that replays recorded timings;
//! the Raspberry Pi pin (rppal) lives in `gpio.rs`, behind the default-on `gpio` feature.
//!
//! What it does not do: check that values are plausible (the agent does, with the model's
//! ranges from [`DhtConfig::default_validation`] filling what the config leaves unset), average
//! or smooth readings, or read a sensor faster than its model allows.
//!
//! [`SourceSink::reject`]: super::SourceSink::reject

#[cfg(test)]
mod fake;
#[cfg(feature = "gpio")]
mod gpio;
mod sensor;
mod source;
#[cfg(test)]
mod tests;

pub use sensor::{read_sensor, Measurement, SensorError};
pub use source::DhtSource;

use super::{Source, SourceError};
use crate::validate::{Range, ValidationConfig};
use serde::Deserialize;
use sluice_proto::{SensorId, StreamName};
use std::fmt;

/// The sensor model; it decides the start signal, the decoding, the fastest read rate and the
/// plausible ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtModel {
    /// DHT22 / AM2302: −40…80 °C and 0…100 % in tenths, at most one read per 2 s.
    Dht22,
    /// DHT11: 0…50 °C and 20…90 % in whole units, at most one read per second.
    Dht11,
}

impl DhtModel {
    /// The shortest time between two reads the sensor tolerates, ms. Read faster, it answers
    /// with stale values or not at all.
    pub fn interval_ms_min(self) -> u64 {
        match self {
            DhtModel::Dht22 => 2_000,
            DhtModel::Dht11 => 1_000,
        }
    }

    /// The ranges the model can measure.
    pub fn validation(self) -> ValidationConfig {
        let (temperature, humidity) = match self {
            DhtModel::Dht22 => (Range::new(-40.0, 80.0), Range::new(0.0, 100.0)),
            DhtModel::Dht11 => (Range::new(0.0, 50.0), Range::new(20.0, 90.0)),
        };
        ValidationConfig {
            temperature: Some(temperature),
            humidity: Some(humidity),
            ..ValidationConfig::default()
        }
    }
}

impl fmt::Display for DhtModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DhtModel::Dht22 => "dht22",
            DhtModel::Dht11 => "dht11",
        })
    }
}

/// The highest BCM GPIO number on the Raspberry Pi's 40-pin header.
pub const PIN_MAX: u8 = 27;
/// The longest configurable read interval, ms (one day).
pub const INTERVAL_MS_MAX: u64 = 86_400_000;
/// The most attempts one read cycle may make (each retry waits the model's minimum interval).
pub const READ_ATTEMPTS_MAX: u32 = 10;

/// `[[sources]] type = "dht"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhtConfig {
    /// The source's name (unique in the config; a label in metrics).
    pub name: String,
    /// The stream its readings go to.
    pub stream: StreamName,
    /// The base sensor id: readings go out as `<sensor>/temperature` and `<sensor>/humidity`.
    pub sensor: SensorId,
    /// `"dht22"` or `"dht11"`.
    pub model: DhtModel,
    /// The BCM GPIO number of the data line (`4` is physical pin 7), 0..=27.
    pub pin: u8,
    /// Time between reads, ms; unset is the model's minimum (DHT22 2000, DHT11 1000), and it
    /// may not be shorter. Use [`DhtConfig::interval_ms`] for the effective value.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Attempts per read cycle (1..=10): a failed read is retried after the model's minimum
    /// interval. Default 3.
    #[serde(default = "default_read_attempts_max")]
    pub read_attempts_max: u32,
    /// Consecutive cycles in which every attempt failed after which the source fails, so the
    /// supervisor restarts it and the pin is opened again. Default 30.
    #[serde(default = "default_failed_reads_max")]
    pub failed_reads_max: u32,
    /// Plausibility bounds and limits; unset bounds default to the model's ranges.
    #[serde(default)]
    pub validation: ValidationConfig,
}

fn default_read_attempts_max() -> u32 {
    3
}

fn default_failed_reads_max() -> u32 {
    30
}

impl DhtConfig {
    /// The streams its readings go to.
    pub fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    /// The effective time between reads, ms.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
            .unwrap_or_else(|| self.model.interval_ms_min())
    }

    /// The sensor ids of the temperature and the humidity readings.
    pub fn sensor_ids(&self) -> Result<(SensorId, SensorId), String> {
        let derive = |quantity: &str| {
            let id = format!("{}/{quantity}", self.sensor);
            SensorId::new(id.as_str()).map_err(|e| format!("sensor id {id:?}: {e}"))
        };
        Ok((derive("temperature")?, derive("humidity")?))
    }

    /// Adds every problem to `problems`, prefixed by `at`.
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        let interval_ms_min = self.model.interval_ms_min();
        match self.interval_ms {
            Some(ms) if ms < interval_ms_min => problems.push(format!(
                "{at}.interval_ms: {ms} ms is below the {} minimum of {interval_ms_min} ms \
                 (the sensor cannot be read faster)",
                self.model
            )),
            Some(ms) if ms > INTERVAL_MS_MAX => problems.push(format!(
                "{at}.interval_ms: {ms} ms is above the longest interval of {INTERVAL_MS_MAX} ms"
            )),
            _ => {}
        }
        if self.pin > PIN_MAX {
            problems.push(format!(
                "{at}.pin: BCM {} is not a GPIO of the Raspberry Pi header (BCM 0..={PIN_MAX})",
                self.pin
            ));
        }
        if !(1..=READ_ATTEMPTS_MAX).contains(&self.read_attempts_max) {
            problems.push(format!(
                "{at}.read_attempts_max must be between 1 and {READ_ATTEMPTS_MAX}, got {}",
                self.read_attempts_max
            ));
        }
        if self.failed_reads_max == 0 {
            problems.push(format!("{at}.failed_reads_max must be positive"));
        }
        if let Err(problem) = self.sensor_ids() {
            problems.push(format!("{at}.sensor: {problem}"));
        }
    }

    /// Builds the source and opens its pin. Off a Raspberry Pi, or when the pin is taken or
    /// not accessible, this is a setup error naming the pin and rppal's reason.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        self.build_gpio()
    }

    #[cfg(feature = "gpio")]
    fn build_gpio(&self) -> Result<Box<dyn Source>, SourceError> {
        let pin = self.pin;
        let mut source = DhtSource::new(self, move || gpio::open(pin))?;
        source.open().map_err(|reason| SourceError::Setup {
            source_name: self.name.clone(),
            reason,
        })?;
        Ok(Box::new(source))
    }

    #[cfg(not(feature = "gpio"))]
    fn build_gpio(&self) -> Result<Box<dyn Source>, SourceError> {
        Err(SourceError::Setup {
            source_name: self.name.clone(),
            reason: format!(
                "gpio {}: the agent was built without GPIO support (cargo feature `gpio`)",
                self.pin
            ),
        })
    }

    /// The model's plausible ranges.
    pub fn default_validation(&self) -> ValidationConfig {
        self.model.validation()
    }
}

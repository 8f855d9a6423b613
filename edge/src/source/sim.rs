//! The `sim` source: seeded simulated sensors for demos, tests, benchmarks and `sluice-sim`.
//!
//! Each simulated sensor produces temperature and/or humidity readings every `interval_ms`
//! following a daily cycle plus Gaussian-ish noise, with occasional spikes, stretches of a stuck
//! value and dropouts (the sensor says nothing for a while). The same seed, source index and
//! environment seed give the same readings. It does not model sensor faults that a real driver
//! reports as errors (checksum, timeout): those belong to the `dht` source.

use super::{Source, SourceContext, SourceError, SourceReading};
use crate::validate::ValidationConfig;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use sluice_proto::env::BoxFuture;
use sluice_proto::{Payload, Reading, SensorId, StreamName};
use std::time::Duration;

/// Salt of the per-source RNG.
const RNG_SALT: u64 = 0x5349_4d53_4f55_5243; // "SIMSOURC"

/// What a simulated sensor measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// °C.
    Temperature,
    /// % RH.
    Humidity,
}

/// `[[sources]] type = "sim"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The source's name (unique in the config; a label in metrics).
    pub name: String,
    /// The stream its readings go to.
    pub stream: StreamName,
    /// Simulated devices; device `i` has sensor ids `<sensor_prefix>-<i>/<quantity>`.
    #[serde(default = "default_devices")]
    pub devices: u32,
    /// Prefix of the sensor ids.
    #[serde(default = "default_sensor_prefix")]
    pub sensor_prefix: String,
    /// What each device measures.
    #[serde(default = "default_quantities")]
    pub quantities: Vec<Quantity>,
    /// Time between two readings of a device, ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Mean temperature, °C.
    #[serde(default = "default_temperature_mean")]
    pub temperature_mean: f64,
    /// Mean relative humidity, %.
    #[serde(default = "default_humidity_mean")]
    pub humidity_mean: f64,
    /// Length of the daily cycle, ms (shorten it for demos).
    #[serde(default = "default_day_ms")]
    pub day_ms: u64,
    /// Chance per reading that a spike of ±8 units starts (lasting a few readings).
    #[serde(default = "default_spike_probability")]
    pub spike_probability: f64,
    /// Chance per reading that the value sticks for a while (a flatline).
    #[serde(default = "default_stuck_probability")]
    pub stuck_probability: f64,
    /// Chance per reading that the device falls silent for a while.
    #[serde(default = "default_dropout_probability")]
    pub dropout_probability: f64,
    /// Mixed into the seed, so two sim sources of one agent differ.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many readings per device and quantity (then the source ends); unset
    /// runs forever.
    #[serde(default)]
    pub readings_max: Option<u64>,
    /// Plausibility bounds and limits.
    #[serde(default)]
    pub validation: ValidationConfig,
}

fn default_devices() -> u32 {
    4
}
fn default_sensor_prefix() -> String {
    "sim".to_owned()
}
fn default_quantities() -> Vec<Quantity> {
    vec![Quantity::Temperature, Quantity::Humidity]
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_temperature_mean() -> f64 {
    21.0
}
fn default_humidity_mean() -> f64 {
    45.0
}
fn default_day_ms() -> u64 {
    86_400_000
}
fn default_spike_probability() -> f64 {
    0.002
}
fn default_stuck_probability() -> f64 {
    0.001
}
fn default_dropout_probability() -> f64 {
    0.001
}

/// Devices one sim source may simulate.
pub const DEVICES_MAX: u32 = 10_000;

impl SimConfig {
    /// The streams its readings go to.
    pub fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    /// Adds every problem to `problems`, prefixed by `at`.
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.devices == 0 || self.devices > DEVICES_MAX {
            problems.push(format!("{at}.devices must be 1 to {DEVICES_MAX}"));
        }
        if self.quantities.is_empty() {
            problems.push(format!("{at}.quantities must name at least one quantity"));
        }
        if self.interval_ms == 0 || self.day_ms == 0 {
            problems.push(format!("{at}.interval_ms and day_ms must be positive"));
        }
        for (key, p) in [
            ("spike_probability", self.spike_probability),
            ("stuck_probability", self.stuck_probability),
            ("dropout_probability", self.dropout_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                problems.push(format!("{at}.{key} must be within 0..=1, got {p}"));
            }
        }
        if let Err(e) = SensorId::new(format!("{}-0/temperature", self.sensor_prefix)) {
            problems.push(format!("{at}.sensor_prefix: {e}"));
        }
    }

    /// Builds the source.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        let mut sensors = Vec::new();
        for device in 0..self.devices {
            for quantity in &self.quantities {
                let suffix = match quantity {
                    Quantity::Temperature => "temperature",
                    Quantity::Humidity => "humidity",
                };
                let id = format!("{}-{device}/{suffix}", self.sensor_prefix);
                let sensor = SensorId::new(id).map_err(|e| SourceError::Setup {
                    source_name: self.name.clone(),
                    reason: e.to_string(),
                })?;
                sensors.push(SimSensor::new(sensor, *quantity, device));
            }
        }
        Ok(Box::new(SimSource {
            config: self.clone(),
            sensors,
            rng: None,
            tick: 0,
        }))
    }
}

/// The state of one simulated sensor.
#[derive(Debug, Clone)]
struct SimSensor {
    id: SensorId,
    quantity: Quantity,
    /// A per-device offset so devices differ.
    offset: f64,
    spike_left: u32,
    spike: f64,
    stuck_left: u32,
    stuck_value: f64,
    silent_left: u32,
    emitted: u64,
}

impl SimSensor {
    fn new(id: SensorId, quantity: Quantity, device: u32) -> Self {
        Self {
            id,
            quantity,
            offset: f64::from(device % 7) * 0.4 - 1.2,
            spike_left: 0,
            spike: 0.0,
            stuck_left: 0,
            stuck_value: 0.0,
            silent_left: 0,
            emitted: 0,
        }
    }
}

/// A running sim source.
struct SimSource {
    config: SimConfig,
    sensors: Vec<SimSensor>,
    rng: Option<ChaCha8Rng>,
    tick: u64,
}

/// Roughly normal noise (sum of uniforms), mean 0, standard deviation about `sigma`.
fn noise(rng: &mut ChaCha8Rng, sigma: f64) -> f64 {
    let sum: f64 = (0..4).map(|_| rng.random_range(-1.0..1.0)).sum();
    sum * sigma * 0.866
}

impl SimSource {
    /// The next value of sensor `idx` at `phase` (0..1 of the day), or `None` while silent.
    fn next_value(&mut self, idx: usize, phase: f64) -> Option<f64> {
        let c = &self.config;
        let (mean, amplitude, sigma) = match self.sensors[idx].quantity {
            Quantity::Temperature => (c.temperature_mean, 3.0, 0.15),
            Quantity::Humidity => (c.humidity_mean, 8.0, 0.6),
        };
        let (spike_p, stuck_p, dropout_p) = (
            c.spike_probability,
            c.stuck_probability,
            c.dropout_probability,
        );
        let rng = self.rng.as_mut()?;
        let sensor = &mut self.sensors[idx];
        if sensor.silent_left > 0 {
            sensor.silent_left -= 1;
            return None;
        }
        if rng.random_bool(dropout_p) {
            sensor.silent_left = rng.random_range(5..60);
            return None;
        }
        let cycle = (phase * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2).sin();
        let mut value = mean + sensor.offset + amplitude * cycle + noise(rng, sigma);
        if sensor.stuck_left > 0 {
            sensor.stuck_left -= 1;
            value = sensor.stuck_value;
        } else if rng.random_bool(stuck_p) {
            sensor.stuck_left = rng.random_range(20..200);
            sensor.stuck_value = (value * 10.0).round() / 10.0;
            value = sensor.stuck_value;
        }
        if sensor.spike_left > 0 {
            sensor.spike_left -= 1;
            value += sensor.spike;
        } else if rng.random_bool(spike_p) {
            sensor.spike_left = rng.random_range(1..6);
            sensor.spike = if rng.random_bool(0.5) { 8.0 } else { -8.0 };
            value += sensor.spike;
        }
        if sensor.quantity == Quantity::Humidity {
            value = value.clamp(0.0, 100.0);
        }
        Some((value * 100.0).round() / 100.0)
    }

    async fn run_inner(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        if self.rng.is_none() {
            let owner = context.source_idx as u64 ^ self.config.seed.rotate_left(17);
            self.rng = Some(context.env.rng(owner, RNG_SALT));
        }
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self
                .config
                .readings_max
                .is_some_and(|max| self.sensors.iter().all(|s| s.emitted >= max))
            {
                return Ok(());
            }
            ticker.tick().await;
            let wall = context.env.clock.wall();
            let day = self.config.day_ms.max(1) as i64;
            let phase = wall.0.rem_euclid(day) as f64 / day as f64;
            self.tick += 1;
            for idx in 0..self.sensors.len() {
                if self
                    .config
                    .readings_max
                    .is_some_and(|max| self.sensors[idx].emitted >= max)
                {
                    continue;
                }
                let Some(value) = self.next_value(idx, phase) else {
                    continue;
                };
                let sensor = &mut self.sensors[idx];
                sensor.emitted += 1;
                let reading = match sensor.quantity {
                    Quantity::Temperature => Reading::Temperature { celsius: value },
                    Quantity::Humidity => Reading::Humidity { percent: value },
                };
                let offered = SourceReading {
                    stream: self.config.stream.clone(),
                    sensor: sensor.id.clone(),
                    device_time: wall,
                    payload: Payload::Reading(reading),
                };
                context.sink.count_read();
                if context.sink.offer(offered).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

impl Source for SimSource {
    fn run<'a>(&'a mut self, context: &'a SourceContext) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(self.run_inner(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testing::test_context;
    use sluice_proto::env::{BlockingMode, Clock, Env};
    use sluice_proto::UnixMillis;
    use std::sync::Arc;

    struct FixedClock;
    impl Clock for FixedClock {
        #[allow(clippy::disallowed_methods)] // tokio's paused clock, as the simulator's
        fn now(&self) -> std::time::Instant {
            tokio::time::Instant::now().into_std()
        }
        fn wall(&self) -> UnixMillis {
            UnixMillis(1_700_000_000_000)
        }
    }

    fn env(seed: u64) -> Env {
        Env {
            clock: Arc::new(FixedClock),
            disk: Arc::new(sluice_proto::os::FsDisk),
            blocking: BlockingMode::Inline,
            seed,
        }
    }

    fn config(devices: u32, readings_max: u64) -> SimConfig {
        let text = format!(
            "name = \"s\"\nstream = \"sensors\"\ndevices = {devices}\nreadings_max = {readings_max}\n\
             spike_probability = 0.05\nstuck_probability = 0.02\ndropout_probability = 0.0"
        );
        toml_config(&text)
    }

    fn toml_config(text: &str) -> SimConfig {
        figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn collect(seed: u64, config: &SimConfig) -> Vec<SourceReading> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (context, mut inbox) = test_context("s", env(seed), 16, dir.path());
        let mut source = config.build().unwrap_or_else(|e| panic!("{e}"));
        let run = tokio::spawn(async move { source.run(&context).await });
        while inbox.step().await {}
        let result = run.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result, Ok(()));
        inbox.readings
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_readings_and_plausible_values() {
        // Checks determinism (one seed, one sequence), the count per sensor, and that values
        // stay in a plausible band around the configured means (spikes included).
        let config = config(3, 50);
        let a = collect(7, &config).await;
        let b = collect(7, &config).await;
        let c = collect(8, &config).await;
        assert_eq!(a.len(), 3 * 2 * 50);
        assert_eq!(a, b);
        assert_ne!(a, c);
        for r in &a {
            let Payload::Reading(reading) = &r.payload else {
                panic!("not a reading: {r:?}")
            };
            let v = reading.value();
            match reading {
                Reading::Temperature { .. } => assert!((5.0..40.0).contains(&v), "{v}"),
                Reading::Humidity { .. } => assert!((0.0..=100.0).contains(&v), "{v}"),
                Reading::Metric { .. } => panic!("no metrics expected"),
            }
        }
    }

    #[test]
    fn bad_config_lists_every_problem() {
        // Checks that validation reports each bad key at once.
        let config = toml_config(
            "name = \"s\"\nstream = \"sensors\"\ndevices = 0\nquantities = []\n\
             spike_probability = 2.0\nsensor_prefix = \"bad prefix\"",
        );
        let mut problems = Vec::new();
        config.validate("sources.s", &mut problems);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}

//! The read loop of the `dht` source: wait, read (with bounded retries), offer the two
//! readings, and fail only after many consecutive failed cycles. Generic over the pin and
//! delay; the pin is opened through a closure, once when the source is built and again after
//! every failure. It does not decode bits (`sensor.rs`) or know about rppal (`gpio.rs`).

use super::sensor::{read_sensor, Measurement, SensorError};
use super::{DhtConfig, DhtModel};
use crate::source::{SinkClosed, Source, SourceContext, SourceError, SourceReading};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{InputPin, OutputPin};
use sluice_proto::env::BoxFuture;
use sluice_proto::os::run_blocking;
use sluice_proto::{Payload, Reading, SensorId, StreamName, UnixMillis};
use std::fmt;
use std::time::{Duration, Instant};
use tracing::info;

/// Opens the sensor's line: the pin and the delay that times it.
type Opener<P, D> = Box<dyn FnMut() -> Result<(P, D), String> + Send>;

/// What the loop needs from the configuration, validated.
#[derive(Debug, Clone)]
struct Settings {
    name: String,
    stream: StreamName,
    temperature_sensor: SensorId,
    humidity_sensor: SensorId,
    model: DhtModel,
    pin: u8,
    interval: Duration,
    interval_min: Duration,
    read_attempts_max: u32,
    failed_reads_max: u32,
}

/// A DHT sensor on a line of type `P` timed by `D`: the [`Source`] behind `type = "dht"`.
/// `build()` makes one over a Raspberry Pi pin; tests and the simulator make one over a fake
/// line.
pub struct DhtSource<P, D> {
    settings: Settings,
    opener: Opener<P, D>,
    /// The open line; `None` before the first open and after a failure, so a restart opens it
    /// again.
    line: Option<(P, D)>,
}

impl<P, D> fmt::Debug for DhtSource<P, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhtSource")
            .field("settings", &self.settings)
            .field("open", &self.line.is_some())
            .finish_non_exhaustive()
    }
}

impl<P, D> DhtSource<P, D>
where
    P: InputPin + OutputPin + Send + 'static,
    D: DelayNs + Send + 'static,
{
    /// A source for `config` whose line `open` opens (it is called on the first read and again
    /// after every failure; its error names the pin and the reason). A `config` that does not
    /// validate is a setup error listing every problem.
    pub fn new(
        config: &DhtConfig,
        open: impl FnMut() -> Result<(P, D), String> + Send + 'static,
    ) -> Result<Self, SourceError> {
        let setup = |reason: String| SourceError::Setup {
            source_name: config.name.clone(),
            reason,
        };
        let mut problems = Vec::new();
        config.validate(&format!("sources.{}", config.name), &mut problems);
        if !problems.is_empty() {
            return Err(setup(problems.join("; ")));
        }
        let (temperature_sensor, humidity_sensor) = config.sensor_ids().map_err(setup)?;
        let settings = Settings {
            name: config.name.clone(),
            stream: config.stream.clone(),
            temperature_sensor,
            humidity_sensor,
            model: config.model,
            pin: config.pin,
            interval: Duration::from_millis(config.interval_ms()),
            interval_min: Duration::from_millis(config.model.interval_ms_min()),
            read_attempts_max: config.read_attempts_max,
            failed_reads_max: config.failed_reads_max,
        };
        Ok(Self {
            settings,
            opener: Box::new(open),
            line: None,
        })
    }

    /// Opens the line unless it is open; the error names the pin and the reason.
    pub fn open(&mut self) -> Result<(), String> {
        let line = self.take_line()?;
        self.line = Some(line);
        Ok(())
    }

    fn take_line(&mut self) -> Result<(P, D), String> {
        if let Some(line) = self.line.take() {
            return Ok(line);
        }
        let line = (self.opener)()?;
        let s = &self.settings;
        info!(source = %s.name, pin = s.pin, model = %s.model, "dht sensor opened");
        Ok(line)
    }

    fn failed(&self, reason: String) -> SourceError {
        SourceError::Failed {
            source_name: self.settings.name.clone(),
            reason,
        }
    }

    async fn run_loop(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let clock = context.env.clock.clone();
        self.open().map_err(|reason| self.failed(reason))?;
        // The sensor may have just powered up, or been read just before a restart: give it its
        // minimum interval before the first read.
        let mut next_read = clock.now() + self.settings.interval_min;
        let mut n_failed_cycles = 0;
        loop {
            tokio::time::sleep_until(next_read.into()).await;
            let cycle_start = clock.now();
            let (result, last_attempt) = self.read_cycle(context).await?;
            match result {
                Ok(measurement) => {
                    n_failed_cycles = 0;
                    let device_time = clock.wall();
                    if offer(&self.settings, context, device_time, measurement)
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(error) => {
                    n_failed_cycles += 1;
                    if n_failed_cycles >= self.settings.failed_reads_max {
                        // Close the pin: the supervisor's restart opens it again.
                        self.line = None;
                        return Err(self.failed(cycles_failed(&self.settings, &error)));
                    }
                }
            }
            next_read = next_read_at(&self.settings, cycle_start, last_attempt);
        }
    }

    /// One read cycle: up to `read_attempts_max` attempts, each retry after the model's
    /// minimum interval, each failure counted as a rejection. Returns the measurement or the
    /// last error, and when the last attempt started; `Err` only if the pin cannot be opened.
    async fn read_cycle(
        &mut self,
        context: &SourceContext,
    ) -> Result<(Result<Measurement, SensorError>, Instant), SourceError> {
        let attempts_max = self.settings.read_attempts_max;
        let mut attempt = 1;
        loop {
            let started = context.env.clock.now();
            let error = match self.read_once(context).await? {
                Ok(measurement) => return Ok((Ok(measurement), started)),
                Err(error) => error,
            };
            let s = &self.settings;
            context.sink.reject(
                error.label(),
                format_args!(
                    "gpio {} {}: attempt {attempt} of {attempts_max}: {error}",
                    s.pin, s.model
                ),
            );
            if attempt >= attempts_max {
                return Ok((Err(error), started));
            }
            attempt += 1;
            tokio::time::sleep(s.interval_min).await;
        }
    }

    /// One blocking read on the blocking pool; the line moves into the closure and back.
    async fn read_once(
        &mut self,
        context: &SourceContext,
    ) -> Result<Result<Measurement, SensorError>, SourceError> {
        let (mut pin, mut delay) = self.take_line().map_err(|reason| self.failed(reason))?;
        let model = self.settings.model;
        let (pin, delay, result) = run_blocking(context.env.blocking, move || {
            let result = read_sensor(model, &mut delay, &mut pin);
            (pin, delay, result)
        })
        .await;
        self.line = Some((pin, delay));
        Ok(result)
    }
}

impl<P, D> Source for DhtSource<P, D>
where
    P: InputPin + OutputPin + Send + 'static,
    D: DelayNs + Send + 'static,
{
    fn run<'a>(&'a mut self, context: &'a SourceContext) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(self.run_loop(context))
    }
}

/// Counts and offers the two readings of one measurement.
async fn offer(
    settings: &Settings,
    context: &SourceContext,
    device_time: UnixMillis,
    measurement: Measurement,
) -> Result<(), SinkClosed> {
    let readings = [
        (
            &settings.temperature_sensor,
            Reading::Temperature {
                celsius: measurement.celsius,
            },
        ),
        (
            &settings.humidity_sensor,
            Reading::Humidity {
                percent: measurement.percent,
            },
        ),
    ];
    for (sensor, reading) in readings {
        context.sink.count_read();
        // A refusal is counted and logged by the agent; nothing more to do here.
        context
            .sink
            .offer(SourceReading {
                stream: settings.stream.clone(),
                sensor: sensor.clone(),
                device_time,
                payload: Payload::Reading(reading),
            })
            .await?;
    }
    Ok(())
}

/// When the next cycle starts: one interval after this one started, and never sooner than the
/// model's minimum after the last attempt (retries may have used the interval up).
fn next_read_at(settings: &Settings, cycle_start: Instant, last_attempt: Instant) -> Instant {
    (cycle_start + settings.interval).max(last_attempt + settings.interval_min)
}

fn cycles_failed(settings: &Settings, last: &SensorError) -> String {
    format!(
        "gpio {}: {} consecutive {} read cycles failed, each after {} attempts (last: {last})",
        settings.pin, settings.failed_reads_max, settings.model, settings.read_attempts_max
    )
}

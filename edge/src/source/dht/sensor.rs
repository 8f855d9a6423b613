//! One read of a DHT sensor through `dht-sensor`, over any embedded-hal pin and delay, with
//! the driver's errors turned into [`SensorError`]. Blocking: a DHT22 read takes about 5 ms of
//! bit-banging, a DHT11 read about 23 ms. It does not wait between reads or retry.

use super::DhtModel;
use dht_sensor::DhtError;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{InputPin, OutputPin};
use std::fmt;

/// A failed read. Each is an operating error: counted, retried, and a failure of the source
/// only when every attempt of many consecutive cycles fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SensorError {
    /// The sensor did not answer the start signal, or stopped answering mid-transmission (a
    /// level did not change within 100 µs). Happens now and then when Linux preempts the read;
    /// every time means a wiring fault, a missing pull-up or a dead sensor.
    #[error("no answer from the sensor within 100 µs of an expected edge")]
    Timeout,
    /// The 40 bits arrived but the checksum byte does not match the data (noise on the line,
    /// or a bit misread because the read was delayed).
    #[error("checksum mismatch")]
    Checksum,
    /// The pin itself failed to switch or be read.
    #[error("pin error: {0}")]
    Pin(String),
}

impl SensorError {
    /// The `reason` label of the rejection counter.
    pub fn label(&self) -> &'static str {
        match self {
            SensorError::Timeout => "dht_timeout",
            SensorError::Checksum => "dht_checksum",
            SensorError::Pin(_) => "dht_pin",
        }
    }
}

impl<E: fmt::Debug> From<DhtError<E>> for SensorError {
    fn from(error: DhtError<E>) -> Self {
        match error {
            DhtError::Timeout => SensorError::Timeout,
            DhtError::ChecksumMismatch => SensorError::Checksum,
            DhtError::PinError(e) => SensorError::Pin(format!("{e:?}")),
        }
    }
}

/// One decoded read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Temperature, °C.
    pub celsius: f64,
    /// Relative humidity, %.
    pub percent: f64,
}

/// Reads the sensor once: the start signal on `pin`, then the 40 bits, timed with `delay`.
/// Blocks for the whole transmission; call it on the blocking pool.
pub fn read_sensor<P, D>(
    model: DhtModel,
    delay: &mut D,
    pin: &mut P,
) -> Result<Measurement, SensorError>
where
    P: InputPin + OutputPin,
    D: DelayNs,
{
    match model {
        DhtModel::Dht22 => {
            let reading = dht_sensor::dht22::blocking::read(delay, pin)?;
            Ok(Measurement {
                celsius: tenths(reading.temperature),
                percent: tenths(reading.relative_humidity),
            })
        }
        DhtModel::Dht11 => {
            let reading = dht_sensor::dht11::blocking::read(delay, pin)?;
            Ok(Measurement {
                celsius: f64::from(reading.temperature),
                percent: f64::from(reading.relative_humidity),
            })
        }
    }
}

/// The DHT22 sends tenths, which the driver divides into an `f32`; widening that as is would
/// turn 23.1 into 23.100000381…, so round back to the tenth the sensor sent.
fn tenths(value: f32) -> f64 {
    (f64::from(value) * 10.0).round() / 10.0
}

//! A fake DHT line for tests: a sensor that replays recorded timings on a virtual clock.
//!
//! [`FakeDelay`] advances the virtual clock; [`FakePin`] answers with the level the sensor would
//! drive at that virtual time. A trace is a table of `(level, duration_us)` pulses in the form a
//! logic analyser gives them: first the host's start pulse (low), then the line as the sensor
//! drives it after the host lets go (pull-up high ~20–40 µs, sensor low ~80 µs, high ~80 µs,
//! then per bit ~50 µs low and ~26–28 µs high for 0 or ~70 µs high for 1, then a last ~50 µs
//! low before it releases the line). Past the end of the table the pull-up holds the line high.
//!
//! Each start signal the host sends (a low pulse at least as long as the model needs) consumes
//! the next answer of the sensor's script; `None` is a sensor that does not answer, and the last
//! answer repeats forever.

use super::DhtModel;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{self, ErrorKind, ErrorType, InputPin, OutputPin};
use rand::Rng;
use sluice_proto::env::rng_for;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A line level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Low,
    High,
}

use Level::{High as H, Low as L};

/// One pulse of a trace: the level and how long it lasted, µs.
pub(super) type Pulse = (Level, u32);

/// A DHT22 read as a logic analyser shows it, written by hand from the datasheet's timings with
/// the jitter of a real capture: 23.1 °C and 65.2 %, bytes `02 8C 00 E7 75`.
#[rustfmt::skip]
pub(super) const RECORDED_DHT22: &[Pulse] = &[
    // The host's start pulse, the line released, the sensor's answer.
    (L, 1004), (H, 31), (L, 81), (H, 79),
    // 0x02 humidity high
    (L, 52), (H, 26), (L, 51), (H, 27), (L, 53), (H, 26), (L, 50), (H, 28),
    (L, 52), (H, 27), (L, 51), (H, 26), (L, 53), (H, 71), (L, 50), (H, 27),
    // 0x8C humidity low: 0x028C = 652 tenths
    (L, 52), (H, 70), (L, 51), (H, 27), (L, 50), (H, 26), (L, 52), (H, 28),
    (L, 53), (H, 72), (L, 51), (H, 70), (L, 52), (H, 26), (L, 50), (H, 27),
    // 0x00 temperature high (sign bit clear)
    (L, 51), (H, 27), (L, 52), (H, 26), (L, 50), (H, 28), (L, 53), (H, 27),
    (L, 52), (H, 26), (L, 51), (H, 27), (L, 50), (H, 28), (L, 52), (H, 26),
    // 0xE7 temperature low: 0x00E7 = 231 tenths
    (L, 53), (H, 71), (L, 51), (H, 70), (L, 52), (H, 72), (L, 50), (H, 27),
    (L, 51), (H, 26), (L, 52), (H, 70), (L, 53), (H, 71), (L, 50), (H, 69),
    // 0x75 checksum: 0x02 + 0x8C + 0x00 + 0xE7 = 0x175
    (L, 52), (H, 27), (L, 51), (H, 71), (L, 50), (H, 70), (L, 53), (H, 72),
    (L, 52), (H, 26), (L, 51), (H, 70), (L, 50), (H, 27), (L, 52), (H, 71),
    // The sensor's last low, then it releases the line.
    (L, 54),
];

/// How long the host must hold the line low before the sensor answers, µs (the datasheets'
/// minimum, which the driver meets exactly).
pub(super) fn start_low_min_us(model: DhtModel) -> u32 {
    match model {
        DhtModel::Dht22 => 1_000,
        DhtModel::Dht11 => 18_000,
    }
}

/// The five bytes a DHT22 sends for `celsius_tenths` and `percent_tenths` (sign and
/// magnitude, big-endian), with the checksum.
pub(super) fn dht22_bytes(celsius_tenths: i16, percent_tenths: u16) -> [u8; 5] {
    let magnitude = celsius_tenths.unsigned_abs();
    let temperature = if celsius_tenths < 0 {
        magnitude | 0x8000
    } else {
        magnitude
    };
    let [h0, h1] = percent_tenths.to_be_bytes();
    let [t0, t1] = temperature.to_be_bytes();
    with_checksum([h0, h1, t0, t1])
}

/// The five bytes a DHT11 sends for whole degrees and percent, with the checksum.
pub(super) fn dht11_bytes(celsius: u8, percent: u8) -> [u8; 5] {
    with_checksum([percent, 0, celsius, 0])
}

fn with_checksum(data: [u8; 4]) -> [u8; 5] {
    let sum = data.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
    [data[0], data[1], data[2], data[3], sum]
}

/// A trace of `model` sending `bytes` (checksum included, so a test can corrupt it), with the
/// timing jitter of a real sensor drawn from `seed`.
pub(super) fn trace(model: DhtModel, bytes: [u8; 5], seed: u64) -> Vec<Pulse> {
    let mut rng = rng_for(seed, 0, 0xD47);
    let mut pulse = |level, low: u32, high: u32| (level, rng.random_range(low..=high));
    let host_us = start_low_min_us(model);
    let mut pulses = vec![
        pulse(L, host_us, host_us + 10),
        pulse(H, 20, 40),
        pulse(L, 76, 84),
        pulse(H, 76, 84),
    ];
    for byte in bytes {
        for bit_idx in (0..8).rev() {
            pulses.push(pulse(L, 48, 55));
            if byte >> bit_idx & 1 == 1 {
                pulses.push(pulse(H, 68, 74));
            } else {
                pulses.push(pulse(H, 24, 30));
            }
        }
    }
    pulses.push(pulse(L, 48, 55));
    pulses
}

/// The first `n_bits` bits of `trace`: a sensor that stops sending mid-transmission.
pub(super) fn truncated(trace: &[Pulse], n_bits: usize) -> Vec<Pulse> {
    trace[..4 + 2 * n_bits].to_vec()
}

#[derive(Debug)]
struct Line {
    now_ns: u64,
    start_low_min_ns: u64,
    /// Since when the host pulls the line low.
    host_low_since: Option<u64>,
    /// The sensor's answer being sent (the pulses after the host's) and when it began.
    answer: Option<(u64, Vec<Pulse>)>,
    script: VecDeque<Option<Vec<Pulse>>>,
    pin_broken: bool,
    n_starts: usize,
    n_opens: usize,
}

impl Line {
    fn level(&self) -> Level {
        if self.host_low_since.is_some() {
            return L;
        }
        let Some((began_ns, pulses)) = &self.answer else {
            return H;
        };
        let mut end_ns = *began_ns;
        for (level, duration_us) in pulses {
            end_ns += u64::from(*duration_us) * 1_000;
            if self.now_ns < end_ns {
                return *level;
            }
        }
        H
    }

    fn release(&mut self) {
        let Some(since) = self.host_low_since.take() else {
            return;
        };
        if self.now_ns - since < self.start_low_min_ns {
            return;
        }
        self.n_starts += 1;
        let next = if self.script.len() > 1 {
            self.script.pop_front().flatten()
        } else {
            self.script.front().cloned().flatten()
        };
        self.answer = next.map(|pulses| (self.now_ns, pulses[1..].to_vec()));
    }
}

/// The test's handle on a fake sensor; clones share it.
#[derive(Debug, Clone)]
pub(super) struct FakeSensor {
    line: Arc<Mutex<Line>>,
}

impl FakeSensor {
    /// A `model` sensor answering successive start signals with `script`.
    pub(super) fn new(model: DhtModel, script: Vec<Option<Vec<Pulse>>>) -> Self {
        let line = Line {
            now_ns: 0,
            start_low_min_ns: u64::from(start_low_min_us(model)) * 1_000,
            host_low_since: None,
            answer: None,
            script: script.into(),
            pin_broken: false,
            n_starts: 0,
            n_opens: 0,
        };
        Self {
            line: Arc::new(Mutex::new(line)),
        }
    }

    /// A sensor whose pin fails every operation.
    pub(super) fn broken(model: DhtModel) -> Self {
        let sensor = Self::new(model, vec![None]);
        sensor.lock().pin_broken = true;
        sensor
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the line: a pin and a delay on the virtual clock.
    pub(super) fn open(&self) -> (FakePin, FakeDelay) {
        self.lock().n_opens += 1;
        (
            FakePin {
                line: self.line.clone(),
            },
            FakeDelay {
                line: self.line.clone(),
            },
        )
    }

    /// Start signals the sensor answered (or ignored, if silent).
    pub(super) fn n_starts(&self) -> usize {
        self.lock().n_starts
    }

    /// Times the line was opened.
    pub(super) fn n_opens(&self) -> usize {
        self.lock().n_opens
    }
}

/// The pin side of the fake line.
#[derive(Debug)]
pub(super) struct FakePin {
    line: Arc<Mutex<Line>>,
}

/// The fake pin's error: the test asked for a broken pin.
#[derive(Debug)]
pub(super) struct FakePinError;

impl digital::Error for FakePinError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl FakePin {
    fn with<R>(&mut self, f: impl FnOnce(&mut Line) -> R) -> Result<R, FakePinError> {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        if line.pin_broken {
            return Err(FakePinError);
        }
        Ok(f(&mut line))
    }
}

impl ErrorType for FakePin {
    type Error = FakePinError;
}

impl OutputPin for FakePin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.with(|line| {
            line.host_low_since = Some(line.now_ns);
            line.answer = None;
        })
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.with(Line::release)
    }
}

impl InputPin for FakePin {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        self.with(|line| line.level() == H)
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        self.with(|line| line.level() == L)
    }
}

/// The delay side of the fake line: it moves the virtual clock.
#[derive(Debug)]
pub(super) struct FakeDelay {
    line: Arc<Mutex<Line>>,
}

impl DelayNs for FakeDelay {
    fn delay_ns(&mut self, ns: u32) {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        line.now_ns += u64::from(ns);
    }
}

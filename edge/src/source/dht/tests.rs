//! Tests of the `dht` source: decoding through a fake line that replays recorded timings, the
//! read loop's retries and failures on paused time, and the configuration.

use super::fake::{
    dht11_bytes, dht22_bytes, trace, truncated, FakeDelay, FakePin, FakeSensor, Pulse,
    RECORDED_DHT22,
};
use super::*;
use crate::source::testing::{test_context, TestInbox};
use crate::source::{SourceContext, SourceReading};
use figment::providers::{Format, Toml};
use figment::Figment;
use sluice_proto::env::{BlockingMode, Env};
use sluice_proto::os::real_env;
use sluice_proto::{Payload, Reading};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Reads `model` once from a sensor answering with `answer` (`None`: silent).
fn read_once(model: DhtModel, answer: Option<Vec<Pulse>>) -> Result<Measurement, SensorError> {
    let (mut pin, mut delay) = FakeSensor::new(model, vec![answer]).open();
    read_sensor(model, &mut delay, &mut pin)
}

fn check(model: DhtModel, answer: Option<Vec<Pulse>>, expected: Result<(f64, f64), SensorError>) {
    let got = read_once(model, answer).map(|m| (m.celsius, m.percent));
    assert_eq!(got, expected);
}

#[test]
fn recorded_dht22_trace_decodes() {
    // Checks the hand-written capture (23.1 °C, 65.2 %) decodes to exactly those tenths.
    check(
        DhtModel::Dht22,
        Some(RECORDED_DHT22.to_vec()),
        Ok((23.1, 65.2)),
    );
}

#[test]
fn dht22_positive_temperature_decodes() {
    // Checks a generated DHT22 trace of 28.3 °C and 52.8 % decodes.
    let bytes = dht22_bytes(283, 528);
    check(
        DhtModel::Dht22,
        Some(trace(DhtModel::Dht22, bytes, 1)),
        Ok((28.3, 52.8)),
    );
}

#[test]
fn dht22_negative_temperature_decodes() {
    // Checks the sign bit: -10.1 °C is sent as 0x80 0x65 and decodes negative.
    let bytes = dht22_bytes(-101, 456);
    assert_eq!(bytes[2..4], [0x80, 0x65]);
    check(
        DhtModel::Dht22,
        Some(trace(DhtModel::Dht22, bytes, 2)),
        Ok((-10.1, 45.6)),
    );
}

#[test]
fn dht22_decodes_across_jitter() {
    // Checks many jitter draws and values over the whole range decode to the tenths sent.
    for seed in 0..200u64 {
        let celsius_tenths = (seed as i16 * 37) % 1200 - 400;
        let percent_tenths = (seed as u16 * 53) % 1001;
        let bytes = dht22_bytes(celsius_tenths, percent_tenths);
        let expected = (
            f64::from(celsius_tenths) / 10.0,
            f64::from(percent_tenths) / 10.0,
        );
        let got = read_once(DhtModel::Dht22, Some(trace(DhtModel::Dht22, bytes, seed)));
        assert_eq!(
            got.map(|m| (m.celsius, m.percent)),
            Ok(expected),
            "seed {seed}"
        );
    }
}

#[test]
fn dht11_decodes() {
    // Checks a DHT11 trace (18 ms start pulse, whole units) of 24 °C and 40 % decodes.
    let bytes = dht11_bytes(24, 40);
    check(
        DhtModel::Dht11,
        Some(trace(DhtModel::Dht11, bytes, 3)),
        Ok((24.0, 40.0)),
    );
}

#[test]
fn dht11_ignores_a_dht22_start_signal() {
    // Checks the model matters: a DHT11 does not answer the DHT22's 1 ms start pulse.
    let bytes = dht11_bytes(24, 40);
    let sensor = FakeSensor::new(
        DhtModel::Dht11,
        vec![Some(trace(DhtModel::Dht11, bytes, 3))],
    );
    let (mut pin, mut delay) = sensor.open();
    let got = read_sensor(DhtModel::Dht22, &mut delay, &mut pin);
    assert_eq!(got, Err(SensorError::Timeout));
}

#[test]
fn corrupted_checksum_is_checksum() {
    // Checks a wrong checksum byte, and a flipped data bit, are both `Checksum`.
    let mut bytes = dht22_bytes(231, 652);
    bytes[4] ^= 0x01;
    let answer = Some(trace(DhtModel::Dht22, bytes, 4));
    check(DhtModel::Dht22, answer, Err(SensorError::Checksum));
    let mut bytes = dht22_bytes(231, 652);
    bytes[1] ^= 0x10;
    let answer = Some(trace(DhtModel::Dht22, bytes, 5));
    check(DhtModel::Dht22, answer, Err(SensorError::Checksum));
}

#[test]
fn silent_sensor_is_timeout() {
    // Checks a sensor that never answers the start signal (the pull-up holds the line high)
    // is `Timeout`.
    check(DhtModel::Dht22, None, Err(SensorError::Timeout));
}

#[test]
fn sensor_stopping_mid_transmission_is_timeout() {
    // Checks a sensor that stops after 17 of 40 bits is `Timeout`, not a short reading.
    let answer = truncated(RECORDED_DHT22, 17);
    check(DhtModel::Dht22, Some(answer), Err(SensorError::Timeout));
}

#[test]
fn pin_failure_is_pin_error() {
    // Checks a pin that cannot be driven is `Pin`, labelled `dht_pin`.
    let (mut pin, mut delay) = FakeSensor::broken(DhtModel::Dht22).open();
    let got = read_sensor(DhtModel::Dht22, &mut delay, &mut pin);
    assert_eq!(got, Err(SensorError::Pin("FakePinError".into())));
    assert_eq!(SensorError::Pin(String::new()).label(), "dht_pin");
}

// The read loop, on paused time with blocking reads inline.

fn config(model: DhtModel) -> DhtConfig {
    DhtConfig {
        name: "fridge".into(),
        stream: StreamName::new("sensors").unwrap_or_else(|e| panic!("{e}")),
        sensor: SensorId::new("fridge-1").unwrap_or_else(|e| panic!("{e}")),
        model,
        pin: 4,
        interval_ms: None,
        read_attempts_max: 3,
        failed_reads_max: 30,
        validation: ValidationConfig::default(),
    }
}

type FakeSource = DhtSource<FakePin, FakeDelay>;
type Running = JoinHandle<(FakeSource, Result<(), SourceError>)>;

/// A source over `sensor`, and a context whose sink feeds an inbox.
fn start(config: &DhtConfig, sensor: &FakeSensor) -> (FakeSource, SourceContext, TestInbox) {
    let sensor = sensor.clone();
    let source =
        DhtSource::new(config, move || Ok(sensor.open())).unwrap_or_else(|e| panic!("{e}"));
    let env = Env {
        blocking: BlockingMode::Inline,
        ..real_env(7)
    };
    let (context, inbox) = test_context(&config.name, env, 8, &std::env::temp_dir());
    (source, context, inbox)
}

fn spawn(mut source: FakeSource, context: SourceContext) -> Running {
    tokio::spawn(async move {
        let result = source.run(&context).await;
        (source, result)
    })
}

/// Accepts offers until `n` readings have arrived; returns the source's end if it ends first.
async fn collect(
    inbox: &mut TestInbox,
    running: &mut Running,
    n: usize,
) -> Option<(FakeSource, Result<(), SourceError>)> {
    while inbox.readings.len() < n {
        tokio::select! {
            biased;
            ended = &mut *running => return Some(ended.unwrap_or_else(|e| panic!("{e}"))),
            _ = inbox.step() => {}
        }
    }
    None
}

fn payloads(readings: &[SourceReading]) -> Vec<(String, Payload)> {
    readings
        .iter()
        .map(|r| (r.sensor.to_string(), r.payload.clone()))
        .collect()
}

fn good_dht22() -> Option<Vec<Pulse>> {
    Some(RECORDED_DHT22.to_vec())
}

#[tokio::test(start_paused = true)]
async fn retry_after_a_failed_attempt_offers_one_pair() {
    // Checks the retry path: the first attempt gets a bad checksum, the second (one minimum
    // interval later) succeeds; one pair of readings with one device time, one rejection.
    let mut corrupted = dht22_bytes(231, 652);
    corrupted[4] ^= 0xFF;
    let bad = Some(trace(DhtModel::Dht22, corrupted, 9));
    let sensor = FakeSensor::new(DhtModel::Dht22, vec![bad, good_dht22()]);
    let (source, context, mut inbox) = start(&config(DhtModel::Dht22), &sensor);
    let clock = context.env.clock.clone();
    let started = clock.now();
    let mut running = spawn(source, context);
    assert!(collect(&mut inbox, &mut running, 2).await.is_none());
    running.abort();
    assert_eq!(clock.now() - started, Duration::from_millis(4_000));
    let expected = [
        (
            "fridge-1/temperature".to_owned(),
            Reading::Temperature { celsius: 23.1 },
        ),
        (
            "fridge-1/humidity".to_owned(),
            Reading::Humidity { percent: 65.2 },
        ),
    ]
    .map(|(sensor, reading)| (sensor, Payload::Reading(reading)));
    assert_eq!(payloads(&inbox.readings), expected);
    assert_eq!(inbox.readings[0].device_time, inbox.readings[1].device_time);
    assert_eq!(sensor.n_starts(), 2);
    let rejected = inbox.rejected("fridge");
    assert_eq!(rejected, [("dht_checksum".to_owned(), 1)].into());
    assert_eq!(inbox.metrics.status().sources["fridge"].read, 2);
}

#[tokio::test(start_paused = true)]
async fn reads_every_interval() {
    // Checks the pace: the first read one model minimum after the start, then one read per
    // configured interval, and nothing in between.
    let mut config = config(DhtModel::Dht22);
    config.interval_ms = Some(5_000);
    let sensor = FakeSensor::new(DhtModel::Dht22, vec![good_dht22()]);
    let (source, context, mut inbox) = start(&config, &sensor);
    let clock = context.env.clock.clone();
    let started = clock.now();
    let mut running = spawn(source, context);
    let mut seconds = Vec::new();
    for n in [2, 4, 6] {
        assert!(collect(&mut inbox, &mut running, n).await.is_none());
        seconds.push((clock.now() - started).as_secs());
    }
    running.abort();
    assert_eq!(seconds, [2, 7, 12]);
    assert_eq!(sensor.n_starts(), 3);
    assert!(inbox.rejected("fridge").is_empty());
}

#[tokio::test(start_paused = true)]
async fn failing_cycles_fail_the_source_and_a_restart_reopens_the_pin() {
    // Checks the failure path: with 2 attempts per cycle and failed_reads_max = 3, three
    // cycles of silence give no reading, 6 counted timeouts, each retry one model minimum
    // after the last attempt, then `run` returns `Failed`; run again, it reopens the pin and
    // reads once the sensor answers.
    let mut config = config(DhtModel::Dht22);
    config.read_attempts_max = 2;
    config.failed_reads_max = 3;
    let mut script = vec![None; 6];
    script.push(good_dht22());
    let sensor = FakeSensor::new(DhtModel::Dht22, script);
    let (source, context, mut inbox) = start(&config, &sensor);
    let clock = context.env.clock.clone();
    let started = clock.now();
    let mut running = spawn(source, context.clone());
    let Some((source, result)) = collect(&mut inbox, &mut running, 1).await else {
        panic!("the source kept running");
    };
    assert_eq!(clock.now() - started, Duration::from_millis(12_000));
    let Err(SourceError::Failed {
        source_name,
        reason,
    }) = result
    else {
        panic!("expected Failed, got {result:?}");
    };
    assert_eq!(source_name, "fridge");
    assert!(
        reason.contains("gpio 4") && reason.contains("3 consecutive"),
        "{reason}"
    );
    assert!(inbox.readings.is_empty());
    assert_eq!(
        inbox.rejected("fridge"),
        [("dht_timeout".to_owned(), 6)].into()
    );
    assert_eq!(inbox.metrics.status().sources["fridge"].read, 0);
    assert_eq!((sensor.n_starts(), sensor.n_opens()), (6, 1));

    let mut running = spawn(source, context);
    assert!(collect(&mut inbox, &mut running, 2).await.is_none());
    running.abort();
    assert_eq!((sensor.n_starts(), sensor.n_opens()), (7, 2));
}

#[tokio::test(start_paused = true)]
async fn a_pin_that_cannot_be_opened_fails_the_run() {
    // Checks a reopen failure is `Failed` naming the pin, not a panic or a silent loop.
    let config = config(DhtModel::Dht11);
    let mut source: FakeSource = DhtSource::new(&config, || {
        Err("gpio 4: cannot open the pin: busy".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let env = Env {
        blocking: BlockingMode::Inline,
        ..real_env(7)
    };
    let (context, _inbox) = test_context("fridge", env, 8, &std::env::temp_dir());
    let result = source.run(&context).await;
    assert_eq!(
        result,
        Err(SourceError::Failed {
            source_name: "fridge".into(),
            reason: "gpio 4: cannot open the pin: busy".into(),
        })
    );
}

// Configuration.

fn problems(config: &DhtConfig) -> Vec<String> {
    let mut problems = Vec::new();
    config.validate("sources.fridge", &mut problems);
    problems
}

#[test]
fn config_defaults_follow_the_model() {
    // Checks the defaults of a minimal table: the model's minimum interval, 3 attempts,
    // 30 failed cycles, and the model's ranges as validation defaults.
    let parse = |model: &str| -> DhtConfig {
        let text = format!(
            "name = 'fridge'\nstream = 'sensors'\nsensor = 'fridge-1'\nmodel = '{model}'\npin = 4"
        );
        Figment::new()
            .merge(Toml::string(&text))
            .extract()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let dht22 = parse("dht22");
    assert_eq!(dht22.interval_ms(), 2_000);
    assert_eq!((dht22.read_attempts_max, dht22.failed_reads_max), (3, 30));
    assert!(problems(&dht22).is_empty());
    let ranges = dht22.default_validation();
    assert_eq!(ranges.temperature, Some(Range::new(-40.0, 80.0)));
    assert_eq!(ranges.humidity, Some(Range::new(0.0, 100.0)));
    let dht11 = parse("dht11");
    assert_eq!(dht11.interval_ms(), 1_000);
    let ranges = dht11.default_validation();
    assert_eq!(ranges.temperature, Some(Range::new(0.0, 50.0)));
    assert_eq!(ranges.humidity, Some(Range::new(20.0, 90.0)));
}

#[test]
fn config_refuses_unknown_keys_and_models() {
    // Checks `deny_unknown_fields` and the model names.
    let parse = |extra: &str| {
        let text = format!("name = 'f'\nstream = 's'\nsensor = 'x'\npin = 4\n{extra}");
        Figment::new()
            .merge(Toml::string(&text))
            .extract::<DhtConfig>()
            .is_ok()
    };
    assert!(parse("model = 'dht22'"));
    assert!(!parse("model = 'dht22'\ngpio_pin = 4"));
    assert!(!parse("model = 'dht21'"));
}

#[test]
fn config_validation_lists_every_problem() {
    // Checks one bad table reports each problem, prefixed and naming the values: an interval
    // below the model minimum, a pin off the header, zero attempts and failed reads, and a
    // sensor id too long to derive the reading ids from.
    let mut config = config(DhtModel::Dht22);
    config.interval_ms = Some(1_500);
    config.pin = 40;
    config.read_attempts_max = 0;
    config.failed_reads_max = 0;
    config.sensor = SensorId::new("s".repeat(250)).unwrap_or_else(|e| panic!("{e}"));
    let found = problems(&config);
    let expected = [
        "sources.fridge.interval_ms: 1500 ms is below the dht22 minimum of 2000 ms",
        "sources.fridge.pin: BCM 40 is not a GPIO",
        "sources.fridge.read_attempts_max must be between 1 and 10, got 0",
        "sources.fridge.failed_reads_max must be positive",
        "sources.fridge.sensor: sensor id",
    ];
    assert_eq!(found.len(), expected.len(), "{found:?}");
    for (problem, start) in found.iter().zip(expected) {
        assert!(
            problem.starts_with(start),
            "{problem:?} should start with {start:?}"
        );
    }
    config.model = DhtModel::Dht11;
    config.interval_ms = Some(999);
    assert!(problems(&config)[0].contains("below the dht11 minimum of 1000 ms"));
}

#[test]
fn new_refuses_an_invalid_config() {
    // Checks `DhtSource::new` does not run a configuration that does not validate.
    let mut config = config(DhtModel::Dht22);
    config.interval_ms = Some(10);
    let sensor = FakeSensor::new(DhtModel::Dht22, vec![None]);
    let result = DhtSource::new(&config, move || Ok(sensor.open()));
    assert!(matches!(result, Err(SourceError::Setup { .. })));
}

#[cfg(feature = "gpio")]
#[test]
fn build_off_a_pi_is_a_setup_error_naming_the_pin() {
    // Checks that on this (non-Pi) machine `build` opens the pin through rppal and fails with
    // a setup error naming the pin and rppal's reason.
    let Err(error) = config(DhtModel::Dht22).build() else {
        panic!("opened a GPIO pin off a Raspberry Pi");
    };
    let SourceError::Setup {
        source_name,
        reason,
    } = &error
    else {
        panic!("expected a setup error, got {error:?}");
    };
    assert_eq!(source_name, "fridge");
    assert!(
        reason.starts_with("gpio 4: cannot open the GPIO: "),
        "{reason}"
    );
}

#[cfg(not(feature = "gpio"))]
#[test]
fn build_without_gpio_support_is_a_setup_error() {
    // Checks an agent built without the `gpio` feature says so, naming the pin.
    let Err(SourceError::Setup { reason, .. }) = config(DhtModel::Dht22).build() else {
        panic!("expected a setup error");
    };
    assert!(
        reason.contains("gpio 4") && reason.contains("without GPIO support"),
        "{reason}"
    );
}

//! The Raspberry Pi side: one BCM GPIO pin through rppal, used as the open-drain line a DHT
//! sensor needs. rppal builds on any target; off a Pi, opening the pin fails with its reason
//! ("Unknown Raspberry Pi model").
//!
//! The DHT data line is shared: the host pulls it low to start a read, then lets go so the
//! sensor can drive it. A push-pull output set high would fight the sensor, so "high" here
//! means switching the pin to an input and letting the pull-up (the module's resistor, plus the
//! Pi's internal one enabled below) raise the line.

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use rppal::gpio::{Bias, Gpio, IoPin, Mode};
use rppal::hal::Delay;
use std::convert::Infallible;

/// A GPIO pin driven as an open-drain line: low is driven, high is released.
#[derive(Debug)]
pub(super) struct OpenDrainPin {
    pin: IoPin,
}

impl ErrorType for OpenDrainPin {
    type Error = Infallible;
}

impl OutputPin for OpenDrainPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        // Set the output latch first, so switching to output never drives the line high.
        self.pin.set_low();
        self.pin.set_mode(Mode::Output);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.pin.set_mode(Mode::Input);
        Ok(())
    }
}

impl InputPin for OpenDrainPin {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(self.pin.is_high())
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(self.pin.is_low())
    }
}

/// Opens BCM pin `pin` as a released (input, pulled-up) line with a spinning delay. The error
/// names the pin and says why (not a Pi, pin in use, permission denied).
pub(super) fn open(pin: u8) -> Result<(OpenDrainPin, Delay), String> {
    let gpio = Gpio::new().map_err(|e| format!("gpio {pin}: cannot open the GPIO: {e}"))?;
    let mut line = gpio
        .get(pin)
        .map_err(|e| format!("gpio {pin}: cannot open the pin: {e}"))?
        .into_io(Mode::Input);
    line.set_bias(Bias::PullUp);
    Ok((OpenDrainPin { pin: line }, Delay::new()))
}

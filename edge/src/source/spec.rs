//! `SourceSpec`: one `[[sources]]` entry of the configuration, and what the agent asks of any
//! kind of source (its name, streams, validation table, and how to build it). It lives with
//! the sources it describes; `config` only embeds it.

use super::{dht, jsonl, mqtt, sim, Source, SourceError};
use crate::validate::ValidationConfig;
use serde::Deserialize;
use sluice_proto::StreamName;

/// One `[[sources]]` entry; `type` selects the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSpec {
    /// A DHT22 or DHT11 on a GPIO pin.
    Dht(dht::DhtConfig),
    /// Subscriptions on an MQTT broker.
    Mqtt(mqtt::MqttConfig),
    /// A file (or stdin) of JSON lines.
    Jsonl(jsonl::JsonlConfig),
    /// Seeded simulated sensors.
    Sim(sim::SimConfig),
}

impl SourceSpec {
    /// The source's configured name.
    pub fn name(&self) -> &str {
        match self {
            SourceSpec::Dht(c) => &c.name,
            SourceSpec::Mqtt(c) => &c.name,
            SourceSpec::Jsonl(c) => &c.name,
            SourceSpec::Sim(c) => &c.name,
        }
    }

    /// The streams its readings go to.
    pub fn streams(&self) -> Vec<StreamName> {
        match self {
            SourceSpec::Dht(c) => c.streams(),
            SourceSpec::Mqtt(c) => c.streams(),
            SourceSpec::Jsonl(c) => c.streams(),
            SourceSpec::Sim(c) => c.streams(),
        }
    }

    /// Its validation table with the kind's defaults filled in.
    pub fn validation(&self) -> ValidationConfig {
        match self {
            SourceSpec::Dht(c) => c.validation.with_defaults(&c.default_validation()),
            SourceSpec::Mqtt(c) => c.validation.clone(),
            SourceSpec::Jsonl(c) => c.validation.clone(),
            SourceSpec::Sim(c) => c.validation.clone(),
        }
    }

    /// Builds the source (opens what must exist before it runs). A failure here is a setup
    /// error: the agent refuses to start and says why.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        match self {
            SourceSpec::Dht(c) => c.build(),
            SourceSpec::Mqtt(c) => c.build(),
            SourceSpec::Jsonl(c) => c.build(),
            SourceSpec::Sim(c) => c.build(),
        }
    }

    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        let at = format!("sources.{}", self.name());
        match self {
            SourceSpec::Dht(c) => c.validate(&at, problems),
            SourceSpec::Mqtt(c) => c.validate(&at, problems),
            SourceSpec::Jsonl(c) => c.validate(&at, problems),
            SourceSpec::Sim(c) => c.validate(&at, problems),
        }
        self.validation()
            .validate(&format!("{at}.validation"), problems);
    }
}

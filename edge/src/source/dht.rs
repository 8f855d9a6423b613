//! The `dht` source (being built).

use super::{Source, SourceError};
use crate::validate::ValidationConfig;
use serde::Deserialize;
use sluice_proto::StreamName;

/// `[[sources]] type = "dht"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhtConfig {
    /// The source's name (unique in the config; a label in metrics).
    pub name: String,
    /// The stream its readings go to.
    pub stream: StreamName,
    /// Plausibility bounds and limits.
    #[serde(default)]
    pub validation: ValidationConfig,
}

impl DhtConfig {
    /// The streams its readings go to.
    pub fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    /// Adds every problem to `problems`, prefixed by `at`.
    pub fn validate(&self, _at: &str, _problems: &mut Vec<String>) {}

    /// Builds the source.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Err(SourceError::Setup {
            source_name: self.name.clone(),
            reason: "not built yet".into(),
        })
    }
}

impl DhtConfig {
    /// The model's plausible ranges.
    pub fn default_validation(&self) -> ValidationConfig {
        ValidationConfig::default()
    }
}

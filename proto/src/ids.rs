//! Identifiers: sized integer newtypes and validated names. Nothing here is `usize`, so every id
//! has the same encoding on every platform, on the wire and on disk.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident($ty:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $ty);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { self.0.fmt(f) }
        }
    };
}

int_id!(
    /// A broker node of the cluster.
    NodeId(u64)
);
int_id!(
    /// A partition of a stream, `0..n_partitions`.
    PartitionId(u32)
);
int_id!(
    /// The position of an event in a partition log; dense, starting at 0.
    Offset(u64)
);
impl Offset {
    /// The offset after this one, or `None` when this is the last offset there can be.
    pub fn checked_next(self) -> Option<Offset> {
        self.0.checked_add(1).map(Offset)
    }

    /// The offset `n` after this one, or `None` beyond the last offset there can be.
    pub fn checked_add(self, n: u64) -> Option<Offset> {
        self.0.checked_add(n).map(Offset)
    }
}

int_id!(
    /// A producer's incarnation: it grows every time a producer starts without its old state,
    /// and sequence numbers restart at 0 in each epoch.
    BootEpoch(u64)
);
int_id!(
    /// Milliseconds since the Unix epoch, as written into data. Never used to measure intervals.
    UnixMillis(i64)
);

/// The longest stream name accepted.
pub const STREAM_NAME_BYTES_MAX: usize = 128;
/// The longest sensor id accepted.
pub const SENSOR_ID_BYTES_MAX: usize = 256;

/// Why a name or identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The name is empty or longer than its limit.
    #[error("{what} must be 1 to {max} bytes long, got {len}")]
    Length {
        /// Which kind of name.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside its alphabet.
    #[error("{what} {name:?} holds {character:?}; allowed are {allowed}")]
    Character {
        /// Which kind of name.
        what: &'static str,
        /// The offending name.
        name: String,
        /// The first character refused.
        character: char,
        /// The allowed alphabet, for the message.
        allowed: &'static str,
    },
    /// A stream name that is not a plain directory name: `.`, `..` or any name starting with a
    /// dot (hidden, and `data_dir/<stream>` would not be a directory of its own).
    #[error("{what} {name:?} must not start with '.': it names a directory under data_dir")]
    LeadingDot {
        /// Which kind of name.
        what: &'static str,
        /// The offending name.
        name: String,
    },
    /// An identity URI is not `sluice://<cluster>/<role>/<name>`.
    #[error("identity {uri:?} is not of the form sluice://<cluster>/<node|edge|admin>/<name>")]
    Uri {
        /// The URI as given.
        uri: String,
    },
}

fn check_name(
    what: &'static str,
    name: &str,
    max: usize,
    extra: &[char],
    allowed: &'static str,
) -> Result<(), IdentityError> {
    if name.is_empty() || name.len() > max {
        return Err(IdentityError::Length {
            what,
            len: name.len(),
            max,
        });
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        return Err(IdentityError::Character {
            what,
            name: name.to_owned(),
            character,
            allowed,
        });
    }
    Ok(())
}

/// A stream name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.`. It is one safe path
/// component, because nodes keep a stream in `<data_dir>/<stream>/` and agents spool it in
/// `<data_dir>/spool/<stream>/`: never `.`, `..`, empty, hidden, or holding `/` or NUL. This one
/// check runs for node and edge configs, the CLI and every decoded frame or stored event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    /// Validates and wraps a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        check_name(
            "stream name",
            &name,
            STREAM_NAME_BYTES_MAX,
            &['.', '_', '-'],
            "A-Z a-z 0-9 . _ -",
        )?;
        if name.starts_with('.') {
            return Err(IdentityError::LeadingDot {
                what: "stream name",
                name,
            });
        }
        Ok(Self(name))
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A sensor id: 1..=256 bytes of `[A-Za-z0-9._:/-]`. It is the partitioning key of a stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SensorId(String);

impl SensorId {
    /// Validates and wraps a sensor id.
    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        check_name(
            "sensor id",
            &name,
            SENSOR_ID_BYTES_MAX,
            &['.', '_', '-', ':', '/'],
            "A-Z a-z 0-9 . _ - : /",
        )?;
        Ok(Self(name))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decoding goes through the validating constructor, so a frame or a stored event can never
/// carry a name the type promises cannot exist.
macro_rules! validated_decode {
    ($name:ident, |$decoder:ident| $body:expr) => {
        impl<Context> Decode<Context> for $name {
            fn decode<D: bincode::de::Decoder<Context = Context>>(
                $decoder: &mut D,
            ) -> Result<Self, bincode::error::DecodeError> {
                $body.map_err(|e: IdentityError| {
                    bincode::error::DecodeError::OtherString(e.to_string())
                })
            }
        }
        impl<'de, Context> bincode::BorrowDecode<'de, Context> for $name {
            fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
                decoder: &mut D,
            ) -> Result<Self, bincode::error::DecodeError> {
                Decode::decode(decoder)
            }
        }
    };
}
validated_decode!(StreamName, |decoder| StreamName::new(String::decode(
    decoder
)?));
validated_decode!(SensorId, |decoder| SensorId::new(String::decode(decoder)?));
validated_decode!(Identity, |decoder| {
    let cluster = String::decode(decoder)?;
    let role = Role::decode(decoder)?;
    let name = String::decode(decoder)?;
    Identity::new(&cluster, role, &name)
});

macro_rules! string_conversions {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = IdentityError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdentityError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}
string_conversions!(StreamName);
string_conversions!(SensorId);

/// What a certificate holder is allowed to be.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A broker node.
    Node,
    /// An edge agent (a producer).
    Edge,
    /// An operator or a CI job using the CLI.
    Admin,
}

impl Role {
    /// The role's path segment in an identity URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Edge => "edge",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated identity, `sluice://<cluster>/<role>/<name>`, taken from a certificate's URI
/// SAN. The broker stamps it on every event; identities claimed inside payloads are ignored.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster name the certificate was issued for.
    pub cluster: String,
    /// The holder's role.
    pub role: Role,
    /// The holder's name within its role.
    pub name: String,
}

/// The URI scheme of identities.
pub const IDENTITY_SCHEME: &str = "sluice://";

impl Identity {
    /// Builds an identity, validating the cluster and holder names.
    pub fn new(cluster: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        check_name(
            "cluster name",
            cluster,
            64,
            &['.', '_', '-'],
            "A-Z a-z 0-9 . _ -",
        )?;
        check_name(
            "identity name",
            name,
            128,
            &['.', '_', '-'],
            "A-Z a-z 0-9 . _ -",
        )?;
        Ok(Self {
            cluster: cluster.to_owned(),
            role,
            name: name.to_owned(),
        })
    }

    /// Parses `sluice://<cluster>/<role>/<name>`.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::Uri {
            uri: uri.to_owned(),
        };
        let rest = uri.strip_prefix(IDENTITY_SCHEME).ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let role = match role {
            "node" => Role::Node,
            "edge" => Role::Edge,
            "admin" => Role::Admin,
            _ => return Err(bad()),
        };
        Self::new(cluster, role, name)
    }

    /// The identity as a URI.
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_SCHEME}{}/{}/{}",
            self.cluster, self.role, self.name
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BAD_STREAM_NAMES;

    #[test]
    fn offsets_do_not_wrap() {
        // Checks that the offset after the last possible one is None rather than offset 0.
        assert_eq!(Offset(7).checked_next(), Some(Offset(8)));
        assert_eq!(Offset(u64::MAX).checked_next(), None);
        assert_eq!(Offset(u64::MAX - 2).checked_add(2), Some(Offset(u64::MAX)));
        assert_eq!(Offset(u64::MAX - 2).checked_add(3), None);
    }

    #[test]
    fn identity_uri_round_trips_and_rejects_malformed() {
        // Checks that identity URIs parse back to what printed them and that every malformed
        // shape is a typed error rather than a panic or a silently wrong identity.
        let id = Identity::parse_uri("sluice://prod/edge/pi-01").unwrap();
        assert_eq!(id, Identity::new("prod", Role::Edge, "pi-01").unwrap());
        assert_eq!(id.uri(), "sluice://prod/edge/pi-01");
        for bad in [
            "",
            "sluice://prod/edge",
            "sluice://prod/king/x",
            "http://prod/edge/x",
            "sluice://prod/edge/x/y",
            "sluice:///edge/x",
            "sluice://prod/edge/a b",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_validated() {
        // Checks the alphabets and length limits of stream names and sensor ids, and that a
        // stream name is always one safe path component: every name of BAD_STREAM_NAMES and an
        // overlong one are refused, and the longest allowed name is accepted.
        assert!(StreamName::new("sensors.temp-1").is_ok());
        assert!(StreamName::new("a..b.").is_ok());
        assert!(StreamName::new("x".repeat(128)).is_ok());
        assert!(StreamName::new("x".repeat(129)).is_err());
        for bad in BAD_STREAM_NAMES {
            assert!(StreamName::new(*bad).is_err(), "{bad:?} accepted");
        }
        assert!(StreamName::new("\0").is_err());
        assert!(matches!(
            StreamName::new(".."),
            Err(IdentityError::LeadingDot { .. })
        ));
        assert!(SensorId::new("fridge-3/temp:0").is_ok());
        assert!(SensorId::new(".hidden-is-fine-for-a-sensor").is_ok());
        assert!(SensorId::new("bad\nid").is_err());
    }

    #[test]
    fn frames_naming_a_bad_stream_do_not_decode() {
        // Checks the wire side of stream names: a metadata request (and a fetch request) naming
        // any stream of BAD_STREAM_NAMES is refused as a malformed body, while the same bytes
        // with a good name decode, so the refusal is the name's and not the encoding's.
        use crate::frame::{decode_body, FrameError, Kind};
        use crate::msg::{FetchFrom, Message};
        let metadata = |name: &str| crate::codec::encode(&(7u64, name.to_owned()));
        let fetch = |name: &str| {
            crate::codec::encode(&(
                7u64,
                name.to_owned(),
                PartitionId(0),
                FetchFrom::Earliest,
                10u32,
                1000u32,
                0u32,
            ))
        };
        for (kind, encode) in [
            (Kind::MetadataRequest, &metadata as &dyn Fn(&str) -> _),
            (Kind::FetchRequest, &fetch),
        ] {
            let good = encode("sensors").unwrap_or_else(|e| panic!("{e}"));
            match decode_body(kind, &good) {
                Ok(Message::MetadataRequest(m)) => assert_eq!(m.stream.as_str(), "sensors"),
                Ok(Message::FetchRequest(m)) => assert_eq!(m.stream.as_str(), "sensors"),
                other => panic!("{kind:?}: {other:?}"),
            }
            for bad in BAD_STREAM_NAMES {
                let body = encode(bad).unwrap_or_else(|e| panic!("{e}"));
                let decoded = decode_body(kind, &body);
                assert!(
                    matches!(decoded, Err(FrameError::Body { .. })),
                    "{kind:?} naming {bad:?}: {decoded:?}"
                );
            }
        }
    }
}

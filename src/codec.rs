//! Codecs: how a job's cursor and state become bytes inside a checkpoint.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a job's cursor and state are encoded inside a checkpoint.
///
/// Each checkpoint records the codec it was written with, and a run decodes
/// with that recorded codec, so switching a job to another codec never breaks
/// the checkpoints already stored: the next save simply uses the new one.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// bincode 2 (serde, `config::standard()`): compact, the default.
    #[default]
    Bincode,
    /// JSON (`serde_json`): bigger, but an operator can read and edit it.
    Json,
}

impl Codec {
    /// The id stored in the checkpoint envelope.
    pub const fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            Codec::Json => 2,
        }
    }

    /// The codec with this envelope id, if this version knows it.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Bincode),
            2 => Some(Codec::Json),
            _ => None,
        }
    }

    /// A short name for messages: `"bincode"` or `"json"`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
        }
    }

    /// Whether a person (or the CLI) can read and edit the encoded bytes.
    pub const fn is_self_describing(self) -> bool {
        matches!(self, Codec::Json)
    }

    /// Encodes a value.
    ///
    /// # Errors
    ///
    /// [`CodecError`] when serde refuses the value (e.g. a map with non-string
    /// keys in JSON).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Bincode => bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| CodecError::new(self, "encode", e)),
            Codec::Json => {
                serde_json::to_vec(value).map_err(|e| CodecError::new(self, "encode", e))
            }
        }
    }

    /// Decodes a value, refusing trailing bytes.
    ///
    /// # Errors
    ///
    /// [`CodecError`] when the bytes are not a whole value of type `T`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode => {
                let (value, used) =
                    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                        .map_err(|e| CodecError::new(self, "decode", e))?;
                if used != bytes.len() {
                    return Err(CodecError::new(
                        self,
                        "decode",
                        format!("{} trailing bytes after the value", bytes.len() - used),
                    ));
                }
                Ok(value)
            }
            Codec::Json => {
                serde_json::from_slice(bytes).map_err(|e| CodecError::new(self, "decode", e))
            }
        }
    }
}

/// A value the codec could not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} could not {operation} the value: {message}")]
pub struct CodecError {
    codec: &'static str,
    operation: &'static str,
    message: String,
}

impl CodecError {
    fn new(codec: Codec, operation: &'static str, message: impl ToString) -> Self {
        Self {
            codec: codec.name(),
            operation,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cursor {
        page: Option<String>,
        done: u64,
        totals: Vec<(String, i64)>,
    }

    fn sample() -> Cursor {
        Cursor {
            page: Some("token/é".into()),
            done: u64::MAX,
            totals: vec![("a".into(), -1), ("b".into(), 2)],
        }
    }

    #[test]
    fn ids_round_trip() {
        for codec in [Codec::Bincode, Codec::Json] {
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
        }
        assert_eq!(Codec::from_id(0), None);
        assert_eq!(Codec::from_id(200), None);
    }

    #[test]
    fn both_codecs_round_trip_a_cursor() {
        for codec in [Codec::Bincode, Codec::Json] {
            let bytes = codec.encode(&sample()).unwrap();
            assert_eq!(
                codec.decode::<Cursor>(&bytes).unwrap(),
                sample(),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn json_is_readable() {
        let bytes = Codec::Json.encode(&sample()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"done\":18446744073709551615"), "{text}");
    }

    #[test]
    fn decode_refuses_truncated_trailing_and_wrong_type() {
        let bytes = Codec::Bincode.encode(&sample()).unwrap();
        let err = Codec::Bincode
            .decode::<Cursor>(&bytes[..bytes.len() - 1])
            .unwrap_err();
        assert!(
            err.to_string().starts_with("bincode could not decode"),
            "{err}"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        let err = Codec::Bincode.decode::<Cursor>(&longer).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        assert!(Codec::Json.decode::<u64>(b"\"text\"").is_err());
    }
}

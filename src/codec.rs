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
    /// keys in JSON), naming where in the value when the codec can tell
    /// ([`CodecError::path`]).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        let encoded = match self {
            Codec::Bincode => bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        };
        // The error path again, tracking where serde was (free when it succeeds).
        encoded.map_err(|message| self.encode_error(value, message))
    }

    /// Encodes a value and makes sure the bytes read back: decodes them as
    /// `T` and encodes the result again, which must give the same bytes.
    ///
    /// This catches what serde lets a codec write but not read: in JSON a
    /// NaN or infinite float (written as `null`) or a map whose keys are not
    /// strings; in bincode a type that needs a self-describing format
    /// (`serde_json::Value`, `#[serde(untagged)]` or `#[serde(flatten)]`)
    /// or a field left out by `#[serde(skip_serializing_if)]`; in either, a
    /// `Deserialize` that does not mirror its `Serialize`. It costs a decode
    /// and an encode more than [`encode`](Self::encode); no `PartialEq` is needed.
    ///
    /// # Errors
    ///
    /// [`CodecError`] when the value does not encode, when its bytes do not
    /// decode as `T`, or when they decode as another value (the bytes of
    /// the two differ); it names the field ([`CodecError::path`]) where the
    /// codec can tell.
    pub fn encode_checked<T: Serialize + DeserializeOwned>(
        self,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let bytes = self.encode(value)?;
        let back: T = self.decode(&bytes).map_err(|mut e| {
            e.operation = Operation::ReadBack;
            e
        })?;
        let again = self.encode(&back).map_err(|mut e| {
            e.operation = Operation::EncodeAgain;
            e
        })?;
        if again != bytes {
            return Err(self.mismatch(&bytes, &again));
        }
        Ok(bytes)
    }

    /// Decodes a value, refusing trailing bytes.
    ///
    /// # Errors
    ///
    /// [`CodecError`] when the bytes are not a whole value of type `T`,
    /// naming where in the value decoding stopped ([`CodecError::path`])
    /// when the codec can tell.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode => {
                let (value, used) =
                    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                        .map_err(|e| self.decode_error::<T>(bytes, e.to_string()))?;
                if used != bytes.len() {
                    return Err(CodecError::new(
                        self,
                        Operation::Decode,
                        format!("{} trailing bytes after the value", bytes.len() - used),
                    ));
                }
                Ok(value)
            }
            Codec::Json => serde_json::from_slice(bytes)
                .map_err(|e| self.decode_error::<T>(bytes, e.to_string())),
        }
    }

    /// A failed encode's error, with the path serde was at when the codec
    /// exposes its serializer (JSON; bincode does not).
    fn encode_error<T: Serialize + ?Sized>(self, value: &T, message: String) -> CodecError {
        let mut error = CodecError::new(self, Operation::Encode, message);
        if self == Codec::Json {
            let mut serializer = serde_json::Serializer::new(std::io::sink());
            if let Err(e) = serde_path_to_error::serialize(value, &mut serializer) {
                error.path = path_of(e.path()).map(String::into_boxed_str);
                error.message = e.into_inner().to_string();
            }
        }
        error
    }

    /// A failed decode's error, with the path serde was at: the bytes are
    /// decoded again, tracking it (only on failure: a decode that succeeds
    /// pays nothing).
    fn decode_error<T: DeserializeOwned>(self, bytes: &[u8], message: String) -> CodecError {
        let mut error = CodecError::new(self, Operation::Decode, message);
        let path = match self {
            Codec::Bincode => {
                let mut decoder = bincode::serde::BorrowedSerdeDecoder::from_slice(
                    bytes,
                    bincode::config::standard(),
                    (),
                );
                serde_path_to_error::deserialize::<_, T>(decoder.as_deserializer())
                    .err()
                    .map(|e| path_of(e.path()))
            }
            Codec::Json => {
                let mut deserializer = serde_json::Deserializer::from_slice(bytes);
                serde_path_to_error::deserialize::<_, T>(&mut deserializer)
                    .err()
                    .map(|e| path_of(e.path()))
            }
        };
        error.path = path.flatten().map(String::into_boxed_str);
        if self == Codec::Bincode && error.path.is_some() {
            // bincode reads a struct as a tuple: serde sees positions, not names.
            error
                .message
                .push_str(" (bincode counts a struct's fields by position, from 0)");
        }
        if self == Codec::Json && error.message.starts_with("invalid type: null") {
            error
                .message
                .push_str(" (JSON writes a NaN or infinite float as null)");
        }
        error
    }

    /// The error for bytes that decoded as another value: where the
    /// encodings first differ (in JSON, the path of the first value that
    /// differs).
    fn mismatch(self, bytes: &[u8], again: &[u8]) -> CodecError {
        let offset = bytes
            .iter()
            .zip(again)
            .position(|(a, b)| a != b)
            .unwrap_or(bytes.len().min(again.len()));
        let mut error = CodecError::new(
            self,
            Operation::ReadBack,
            format!(
                "it decodes as another value (re-encoded: {} bytes instead of {}, \
                 the first difference at byte {offset})",
                again.len(),
                bytes.len()
            ),
        );
        if self == Codec::Json {
            if let (Ok(a), Ok(b)) = (
                serde_json::from_slice::<serde_json::Value>(bytes),
                serde_json::from_slice::<serde_json::Value>(again),
            ) {
                if let Some((path, was, now)) = first_difference(&a, &b, String::new()) {
                    error.path = (!path.is_empty()).then(|| path.into_boxed_str());
                    error.message = format!("it decodes as {now} instead of {was}");
                }
            }
        }
        error
    }
}

/// A serde path for messages; `None` for the value itself.
fn path_of(path: &serde_path_to_error::Path) -> Option<String> {
    let text = path.to_string();
    (text != ".").then_some(text)
}

/// The path of the first place where two JSON values differ, and the two
/// values there (as JSON text, cut to 60 characters).
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: String,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        _ if a == b => None,
        (Value::Object(x), Value::Object(y)) if x.keys().eq(y.keys()) => x
            .iter()
            .zip(y.values())
            .find_map(|((key, u), v)| first_difference(u, v, join(key))),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{path}[{i}]"))),
        _ => {
            let short = |v: &Value| {
                let text = v.to_string();
                match text.char_indices().nth(60) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text,
                }
            };
            Some((path, short(a), short(b)))
        }
    }
}

/// A value the codec could not encode, decode or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} could not {operation} the {what}{}: {message}",
    codec.name(),
    path.as_ref().map(|p| format!(" at `{p}`")).unwrap_or_default()
)]
pub struct CodecError {
    codec: Codec,
    operation: Operation,
    what: &'static str,
    path: Option<Box<str>>,
    message: String,
}

/// What a codec was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Encode,
    Decode,
    ReadBack,
    EncodeAgain,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Encode => "encode",
            Operation::Decode => "decode",
            Operation::ReadBack => "read back",
            Operation::EncodeAgain => "encode again",
        })
    }
}

impl CodecError {
    fn new(codec: Codec, operation: Operation, message: impl ToString) -> Self {
        Self {
            codec,
            operation,
            what: "value",
            path: None,
            message: message.to_string(),
        }
    }

    /// Where in the value serde was when it failed, as fields and indexes
    /// from the top (`totals.mean`, `pages[3].token`); `None` when the codec
    /// cannot tell, or for the value as a whole.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The same error, saying which value it was about (`"cursor"`, `"state"`).
    pub(crate) fn of(mut self, what: &'static str) -> Self {
        self.what = what;
        self
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

    /// Either the value reads back (and then exactly), or the check says
    /// why; never bytes that do not read back.
    fn checked<T>(codec: Codec, value: &T) -> Result<(), CodecError>
    where
        T: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq,
    {
        let bytes = codec.encode_checked(value)?;
        assert_eq!(&codec.decode::<T>(&bytes).unwrap(), value, "{codec:?}");
        Ok(())
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Stats {
        count: u64,
        mean: f64,
    }

    #[test]
    fn json_refuses_a_float_it_would_write_as_null() {
        for mean in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let value = vec![Stats { count: 1, mean }];
            let err = Codec::Json.encode_checked(&value).unwrap_err();
            assert_eq!(err.path(), Some("[0].mean"), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with("json could not read back the value at `[0].mean`"),
                "{text}"
            );
            assert!(text.contains("NaN or infinite float"), "{text}");
            // bincode keeps a float's bits.
            Codec::Bincode.encode_checked(&value).unwrap();
        }
    }

    #[test]
    fn floats_read_back_exactly() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut floats = vec![0.1 + 0.2, 1e-300, f64::MIN_POSITIVE, 5e-324, f64::MAX, -0.0];
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                floats.push(f);
            }
        }
        for codec in [Codec::Bincode, Codec::Json] {
            for &mean in &floats {
                checked(codec, &Stats { count: 0, mean }).unwrap();
            }
        }
    }

    #[test]
    fn json_refuses_map_keys_that_are_not_strings() {
        let value = std::collections::BTreeMap::from([((1u32, 2u32), 3u32)]);
        let err = Codec::Json.encode_checked(&value).unwrap_err();
        assert!(
            err.to_string().starts_with("json could not encode"),
            "{err}"
        );
        assert!(err.to_string().contains("key must be a string"), "{err}");
        checked(Codec::Bincode, &value).unwrap();
        // Integer keys become strings and read back.
        checked(
            Codec::Json,
            &std::collections::BTreeMap::from([(7u64, 1u8)]),
        )
        .unwrap();
    }

    #[test]
    fn wide_integers_read_back_or_are_refused() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Wide {
            a: i128,
            b: u128,
        }
        for codec in [Codec::Bincode, Codec::Json] {
            for (a, b) in [(0, 0), (i128::MIN, u128::MAX), (-1, 1 << 100)] {
                let _ = checked(codec, &Wide { a, b });
            }
        }
    }

    #[test]
    fn bincode_refuses_what_needs_a_self_describing_format() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Flat {
            id: u64,
            #[serde(flatten)]
            rest: std::collections::BTreeMap<String, u64>,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder {
            extra: serde_json::Value,
        }

        let err = Codec::Bincode
            .encode_checked(&Holder {
                extra: serde_json::json!({"a": 1}),
            })
            .unwrap_err();
        // bincode reads a struct as a tuple: its fields by position.
        assert_eq!(err.path(), Some("[0]"), "{err}");
        assert!(err.to_string().contains("by position"), "{err}");
        assert!(Codec::Bincode
            .encode_checked(&vec![Either::Number(1)])
            .is_err());
        let flat = Flat {
            id: 1,
            rest: [("x".to_owned(), 2)].into(),
        };
        assert!(Codec::Bincode.encode_checked(&flat).is_err());
        // JSON reads all three back.
        checked(
            Codec::Json,
            &vec![Either::Number(1), Either::Text("t".into())],
        )
        .unwrap();
        checked(Codec::Json, &flat).unwrap();
    }

    #[test]
    fn a_field_left_out_is_caught() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Sparse {
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
            count: u64,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Defaulted {
            #[serde(skip_serializing_if = "is_seven", default)]
            step: u32,
        }
        fn is_seven(n: &u32) -> bool {
            *n == 7
        }

        for count in [0, 1, 5, 300] {
            let value = Sparse { limit: None, count };
            assert!(Codec::Bincode.encode_checked(&value).is_err(), "{count}");
            checked(Codec::Json, &value).unwrap();
        }
        // Read back as another value: where the two differ.
        let err = Codec::Json
            .encode_checked(&Defaulted { step: 7 })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("it decodes as {\"step\":0} instead of {}"),
            "{err}"
        );
        assert!(Codec::Bincode
            .encode_checked(&Defaulted { step: 7 })
            .is_err());
    }

    #[test]
    fn a_deserialize_that_changes_the_value_is_caught() {
        /// Trims its text when read: not what was written.
        #[derive(Debug, PartialEq, Serialize)]
        struct Trimmed(String);
        impl<'de> Deserialize<'de> for Trimmed {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(Self(String::deserialize(d)?.trim().to_owned()))
            }
        }
        let value = (1u8, Trimmed(" padded ".into()));
        let err = Codec::Bincode.encode_checked(&value).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "it decodes as another value (re-encoded: 8 bytes instead of 10, the first difference at byte 1)"
            ),
            "{err}"
        );
        let err = Codec::Json.encode_checked(&value).unwrap_err();
        assert_eq!(err.path(), Some("[1]"));
        assert!(
            err.to_string()
                .contains("it decodes as \"padded\" instead of \" padded \""),
            "{err}"
        );
        checked(Codec::Bincode, &(1u8, "kept ".to_owned())).unwrap();
    }

    #[test]
    fn a_decode_error_names_the_path() {
        let err = Codec::Json
            .decode::<Vec<Stats>>(br#"[{"count":1,"mean":1.5},{"count":"x","mean":0}]"#)
            .unwrap_err();
        assert_eq!(err.path(), Some("[1].count"), "{err}");
        let err = Codec::Bincode.decode::<Stats>(&[1]).unwrap_err();
        assert_eq!(err.path(), Some("[1]"), "{err}");
    }
}

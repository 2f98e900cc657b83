//! How a job of steps' cursor and states are encoded: the cursor as an
//! enum of one variant per step (`{"step1": …}` in JSON), the states as a
//! tuple of one element per step, each framed with its length in the
//! codecs that are not self-describing, so that a step's part can be cut
//! out of a stored checkpoint without the other steps' types.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, EnumAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::list::StepList;
use super::{StepCursor, StepStates, MAX_STEPS};
use crate::types::STEP_CURSOR;

/// The cursor enum's variant names, by step index.
pub(super) const VARIANTS: [&str; MAX_STEPS] = [
    "step0", "step1", "step2", "step3", "step4", "step5", "step6", "step7", "step8", "step9",
    "step10", "step11", "step12", "step13", "step14", "step15", "step16", "step17", "step18",
    "step19", "step20", "step21", "step22", "step23", "step24", "step25", "step26", "step27",
    "step28", "step29", "step30", "step31", "step32", "step33", "step34", "step35", "step36",
    "step37", "step38", "step39", "step40", "step41", "step42", "step43", "step44", "step45",
    "step46", "step47", "step48", "step49", "step50", "step51", "step52", "step53", "step54",
    "step55", "step56", "step57", "step58", "step59", "step60", "step61", "step62", "step63",
];

impl<L: StepList> Serialize for StepCursor<L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        L::serialize_cursor(&self.0, s)
    }
}

impl<'de, L: StepList> Deserialize<'de> for StepCursor<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum(
            STEP_CURSOR,
            &VARIANTS[..L::LEN.min(MAX_STEPS)],
            CursorVisitor::<L>(PhantomData),
        )
    }
}

struct CursorVisitor<L>(PhantomData<fn() -> L>);

impl<'de, L: StepList> Visitor<'de> for CursorVisitor<L> {
    type Value = StepCursor<L>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the cursor of a job of {} steps", L::LEN)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (VariantIndex(index), variant) = data.variant::<VariantIndex>()?;
        if index >= L::LEN {
            return Err(de::Error::invalid_value(
                de::Unexpected::Unsigned(index as u64),
                &self,
            ));
        }
        L::deserialize_cursor(index, variant).map(StepCursor)
    }
}

/// A cursor variant: its index, or its name (`step1`) in JSON.
struct VariantIndex(usize);

impl<'de> Deserialize<'de> for VariantIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(VariantIndexVisitor)
    }
}

struct VariantIndexVisitor;

impl Visitor<'_> for VariantIndexVisitor {
    type Value = VariantIndex;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a step: its index, or `step` and its index")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<VariantIndex, E> {
        usize::try_from(v)
            .map(VariantIndex)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<VariantIndex, E> {
        VARIANTS
            .iter()
            .position(|name| *name == v)
            .map(VariantIndex)
            .ok_or_else(|| E::unknown_variant(v, &VARIANTS))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<VariantIndex, E> {
        match std::str::from_utf8(v) {
            Ok(v) => self.visit_str(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(v), &self)),
        }
    }
}

/// The index of the step a stored cursor's variant name (`step1`) names.
pub(super) fn variant_index(name: &str) -> Option<usize> {
    VARIANTS.iter().position(|v| *v == name)
}

impl<L: StepList> Serialize for StepStates<L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut tuple = s.serialize_tuple(L::LEN)?;
        L::serialize_states(&self.0, &mut tuple)?;
        tuple.end()
    }
}

impl<'de, L: StepList> Deserialize<'de> for StepStates<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(L::LEN, StatesVisitor::<L>(PhantomData))
    }
}

struct StatesVisitor<L>(PhantomData<fn() -> L>);

impl<'de, L: StepList> Visitor<'de> for StatesVisitor<L> {
    type Value = StepStates<L>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the states of a job of {} steps", L::LEN)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut read = 0;
        let states = L::deserialize_states(&mut seq, &mut read)?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(read + 1, &self));
        }
        Ok(StepStates(states))
    }
}

/// A step's state in a job of steps' states, to encode: as it is in a
/// self-describing codec (JSON), else `(length, state)`, the length being
/// that of the state's bincode encoding, so that a step's state can be cut
/// out of the others without their types.
pub(super) struct FramedRef<'a, T>(pub(super) &'a T);

impl<T: Serialize> Serialize for FramedRef<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.0.serialize(s);
        }
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(self.0, &mut size, bincode::config::standard())
            .map_err(S::Error::custom)?;
        let mut tuple = s.serialize_tuple(2)?;
        tuple.serialize_element(&(size.bytes_written as u64))?;
        tuple.serialize_element(self.0)?;
        tuple.end()
    }
}

/// A step's state as [`FramedRef`] encodes it, decoded.
pub(super) struct Framed<T>(pub(super) T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Framed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return T::deserialize(d).map(Framed);
        }
        d.deserialize_tuple(2, FramedVisitor(PhantomData))
    }
}

struct FramedVisitor<T>(PhantomData<fn() -> T>);

impl<'de, T: DeserializeOwned> Visitor<'de> for FramedVisitor<T> {
    type Value = Framed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a step's state after its length")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let _len: u64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let value = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        Ok(Framed(value))
    }
}

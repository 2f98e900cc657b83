//! How a job of steps' cursor and states are encoded, cut into parts and
//! described.

use serde::{Deserialize, Serialize};

use super::parts::split;
use super::*;
use crate::codec::Codec;

mod a {
    use serde::{Deserialize, Serialize};

    /// A state named like `b`'s, of another shape.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub(super) struct State {
        pub(super) count: u64,
    }
}

mod b {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub(super) struct State {
        pub(super) name: String,
        pub(super) seen: Vec<u32>,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    file: u32,
    offset: u64,
}

/// A job of cursor `C` and state `S` that has no chunks.
struct Nothing<C, S>(std::marker::PhantomData<fn() -> (C, S)>);

impl<C, S> Nothing<C, S> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

#[async_trait]
impl<C, S> Job for Nothing<C, S>
where
    C: Serialize + serde::de::DeserializeOwned + Clone + Debug + Default + Send + Sync + 'static,
    S: Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    type Cursor = C;
    type State = S;

    async fn next_chunk(&mut self, _: &C) -> Result<Option<Chunk<C>>, BoxError> {
        Ok(None)
    }

    async fn process(&mut self, _: &Chunk<C>, _: &mut S, _: &ChunkContext) -> Result<(), BoxError> {
        Ok(())
    }
}

use std::fmt::Debug;

type L = Then<Then<First<Nothing<u64, a::State>>, Nothing<Position, b::State>>, Nothing<u64, u64>>;

fn job() -> Steps<L> {
    Steps::new("extract", Nothing::<u64, a::State>::new())
        .then("transform", Nothing::<Position, b::State>::new())
        .then("load", Nothing::<u64, u64>::new())
}

/// In `transform`, at file 2 offset 80, each step's state set.
fn position() -> (StepCursor<L>, StepStates<L>) {
    let cursor = StepCursor::new(ThenCursor::Before(ThenCursor::In(Position {
        file: 2,
        offset: 80,
    })));
    let states = StepStates::new((
        (
            a::State { count: 7 },
            b::State {
                name: "é".into(),
                seen: vec![1, 300],
            },
        ),
        9,
    ));
    (cursor, states)
}

fn checkpoint(codec: Codec) -> Checkpoint {
    let (cursor, states) = position();
    let mut c = Checkpoint::new(
        crate::JobKey::new("steps").unwrap(),
        crate::Writer::this_process(),
    );
    c.codec = codec;
    c.cursor = codec.encode_checked(&cursor).unwrap();
    c.state = codec.encode_checked(&states).unwrap();
    c.steps = job().info().to_vec();
    c.step = 1;
    c
}

#[test]
fn json_names_the_step_of_the_cursor_and_lists_the_states() {
    let c = checkpoint(Codec::Json);
    assert_eq!(
        std::str::from_utf8(&c.cursor).unwrap(),
        r#"{"step1":{"file":2,"offset":80}}"#
    );
    assert_eq!(
        std::str::from_utf8(&c.state).unwrap(),
        r#"[{"count":7},{"name":"é","seen":[1,300]},9]"#
    );
    let cursor: StepCursor<L> = Codec::Json.decode(&c.cursor).unwrap();
    assert_eq!(
        format!("{cursor:?}"),
        "step 1: Position { file: 2, offset: 80 }"
    );
    assert_eq!(cursor.step(), 1);
    // The first step's cursor and the last's.
    let first = Codec::Json.encode(&StepCursor::<L>::default()).unwrap();
    assert_eq!(std::str::from_utf8(&first).unwrap(), r#"{"step0":0}"#);
    let last = StepCursor::<L>::new(ThenCursor::In(5));
    assert_eq!(
        std::str::from_utf8(&Codec::Json.encode(&last).unwrap()).unwrap(),
        r#"{"step2":5}"#
    );
}

#[test]
fn a_checkpoint_is_cut_into_each_steps_own_encoding() {
    for codec in [Codec::Bincode, Codec::Json] {
        let c = checkpoint(codec);
        let parts = split(&c, 3).unwrap();
        assert_eq!(parts.step, 1);
        let own = |v: &dyn erased::Encode| v.encode(codec);
        assert_eq!(
            parts.cursor,
            own(&Position {
                file: 2,
                offset: 80
            })
        );
        assert_eq!(parts.states[0], own(&a::State { count: 7 }));
        assert_eq!(
            parts.states[1],
            own(&b::State {
                name: "é".into(),
                seen: vec![1, 300]
            })
        );
        assert_eq!(parts.states[2], own(&9_u64));

        // Not a job of 4 steps; a state cut short.
        assert!(split(&c, 4).is_err(), "{codec:?}");
        let mut short = c.clone();
        short.state.pop();
        assert!(split(&short, 3).is_err(), "{codec:?}");
    }
}

/// Encoding a value with a codec, for the test's values of several types.
mod erased {
    use crate::codec::Codec;

    pub(super) trait Encode {
        fn encode(&self, codec: Codec) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self, codec: Codec) -> Vec<u8> {
            codec.encode(self).unwrap()
        }
    }
}

#[test]
fn a_cursor_past_the_steps_or_states_of_another_count_do_not_decode() {
    assert!(Codec::Json
        .decode::<StepCursor<L>>(br#"{"step3":0}"#)
        .is_err());
    assert!(Codec::Json
        .decode::<StepCursor<L>>(br#"{"step9":0}"#)
        .is_err());
    assert!(Codec::Json
        .decode::<StepStates<L>>(br#"[{"count":7},{"name":"","seen":[]}]"#)
        .is_err());
    assert!(Codec::Json
        .decode::<StepStates<L>>(br#"[{"count":7},{"name":"","seen":[]},1,2]"#)
        .is_err());
    let bincode = Codec::Bincode.encode(&(3_u32, 0_u64)).unwrap();
    assert!(Codec::Bincode.decode::<StepCursor<L>>(&bincode).is_err());
}

/// Two steps' types of the same name do not clash: each is described under
/// its step's name.
#[test]
fn the_types_of_each_step_are_described_under_its_name() {
    // Traced together, the two `State`s clash.
    assert!(TypeDescription::trace::<a::State, b::State>().is_err());
    let types = job().types().unwrap();
    let text = types.to_string();
    assert!(
        text.contains("extract::State = struct { count: u64 }"),
        "{text}"
    );
    assert!(
        text.contains("transform::State = struct { name: string, seen: Seq<u32> }"),
        "{text}"
    );
    assert!(
        text.contains(
            "spotbatch::StepCursor = enum { step0(u64), step1(transform::Position), step2(u64) }"
        ),
        "{text}"
    );

    // Each step's part is its own description.
    let own = [
        TypeDescription::trace::<u64, a::State>().unwrap(),
        TypeDescription::trace::<Position, b::State>().unwrap(),
        TypeDescription::trace::<u64, u64>().unwrap(),
    ];
    for (i, own) in own.iter().enumerate() {
        let part = types.step_part(i).unwrap();
        assert_eq!(part.changes_to(own), Some(Ok(())), "step {i}");
    }
    assert!(types.step_part(3).is_none());
    assert!(own[0].step_part(0).is_none(), "not a job of steps");
}

/// The same shapes, written out with serde's derives.
#[allow(non_camel_case_types)] // the variants' names, as encoded
#[derive(Serialize, Deserialize)]
#[serde(rename = "spotbatch::StepCursor")]
enum Derived {
    step0(u64),
    step1(Position),
}

/// The cursor and states of a job of two steps are encoded as serde's
/// derives would encode an enum of a variant per step and a tuple of the
/// states (in bincode, each after its length), and described with the same
/// shape as tracing those gives.
#[test]
fn the_encoding_and_its_description_are_those_of_an_enum_and_a_tuple() {
    type Two = Then<First<Nothing<u64, a::State>>, Nothing<Position, u64>>;
    let two =
        Steps::new("a", Nothing::<u64, a::State>::new()).then("b", Nothing::<Position, u64>::new());
    let described = two.types().unwrap();
    let traced = TypeDescription::trace::<Derived, ((u64, a::State), (u64, u64))>().unwrap();
    assert_eq!(traced.changes_to(&described), Some(Ok(())));
    assert_eq!(described.changes_to(&traced), Some(Ok(())));

    let position = Position { file: 1, offset: 9 };
    let cursor = StepCursor::<Two>::new(ThenCursor::In(position.clone()));
    let state = a::State { count: 300 };
    let states = StepStates::<Two>::new((state.clone(), 70_000));
    let len = |value: &dyn erased::Encode| value.encode(Codec::Bincode).len() as u64;
    let framed = ((len(&state), state.clone()), (len(&70_000_u64), 70_000_u64));
    let derived = Derived::step1(position);
    for codec in [Codec::Bincode, Codec::Json] {
        assert_eq!(
            codec.encode(&cursor).unwrap(),
            codec.encode(&derived).unwrap()
        );
        let expected = match codec {
            Codec::Json => codec.encode(&(state.clone(), 70_000_u64)).unwrap(),
            _ => codec.encode(&framed).unwrap(),
        };
        assert_eq!(codec.encode(&states).unwrap(), expected, "{codec:?}");
    }
}

#[test]
fn the_steps_are_recorded_with_their_schema_versions() {
    let steps = job();
    let names: Vec<&str> = steps.info().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["extract", "transform", "load"]);
    assert!(steps.info().iter().all(|s| s.schema == 1));
    assert_eq!(StepInfo::list(steps.info()), "extract, transform, load");
    assert_eq!(
        StepInfo::list(&[StepInfo::new("a", 1), StepInfo::new("b", 3)]),
        "a, b (schema 3)"
    );
    assert_eq!(StepInfo::list(&[]), "none (a job of one step)");
}

//! The serde shape of a job's cursor and state types, recorded in each
//! checkpoint so that a checkpoint of changed types is refused on load, with
//! what changed, instead of being misread.
//!
//! The shape is traced once per run through the types' `Deserialize` impls
//! with [`serde_reflection`]: every field's name, order and type, every
//! enum's variants, down to the primitives. Two shapes are compared as the
//! codecs read them: container names do not matter (a renamed or moved
//! type reads the same bytes), a newtype struct is its content (both codecs
//! encode it so), and variants appended to an enum are compatible (an old
//! checkpoint holds none of them). Everything else that differs is a change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_reflection::{
    ContainerFormat, Format, Named, Samples, Tracer, TracerConfig, VariantFormat,
};

/// The version of the description's own format, stored inside it; a
/// description of another version is not compared (the type name is).
const VERSION: u32 = 1;

/// How many times tracing starts over to learn of more nested enums, and
/// how many passes one start makes to cover their variants.
const MAX_STARTS: usize = 16;
const MAX_PASSES: usize = 4096;

/// The serde shape of a job's cursor and state types, as recorded in a
/// checkpoint (see the [jobs guide][guide]).
///
/// Its text form (`Display`) lists the cursor's and the state's shape and
/// then each named type, e.g.
///
/// ```text
/// cursor: u64
/// state: Totals
/// Totals = struct { count: u64, mean: f64, by_kind: Map<string, u64> }
/// ```
///
/// It is stored as compact JSON ([`as_json`](Self::as_json)), with a
/// version of its own.
///
/// [guide]: https://github.com/spotbatch/spotbatch/blob/main/docs/jobs.md#changing-the-cursor-or-state-types
#[derive(Clone, PartialEq, Eq)]
pub struct TypeDescription {
    json: Arc<str>,
}

impl TypeDescription {
    /// Traces the shape of `Cursor` and `State` through their `Deserialize`
    /// impls.
    ///
    /// # Errors
    ///
    /// [`TraceError`] for types whose shape cannot be traced: one that
    /// needs a self-describing format (`deserialize_any`: `serde_json::Value`,
    /// `#[serde(untagged)]`, `#[serde(flatten)]`, internally tagged enums);
    /// a `Deserialize` that refuses the placeholder values tracing feeds it
    /// (0, `""`, empty bytes); two different types of the same serde name.
    /// Tracing does not end for an enum that holds itself in its *first*
    /// variant (`enum Expr { Add(Box<Expr>, Box<Expr>), Lit(u64) }`): list
    /// a variant that does not hold it first.
    pub fn trace<Cursor: DeserializeOwned, State: DeserializeOwned>() -> Result<Self, TraceError> {
        let described = trace_pair::<Cursor, State>().map_err(|e| TraceError(e.to_string()))?;
        let json = serde_json::to_string(&described).map_err(|e| TraceError(e.to_string()))?;
        Ok(Self { json: json.into() })
    }

    /// A description from the JSON a checkpoint holds (not checked until
    /// it is compared or shown).
    pub fn from_json(json: impl Into<Arc<str>>) -> Self {
        Self { json: json.into() }
    }

    /// The compact JSON stored in the checkpoint.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// A short fingerprint of the description: the CRC-32 of its JSON, as
    /// 8 hex digits. Equal descriptions have equal fingerprints.
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", crc32fast::hash(self.json.as_bytes()))
    }

    fn parsed(&self) -> Option<Described> {
        serde_json::from_str::<Described>(&self.json)
            .ok()
            .filter(|d| d.v == VERSION)
    }

    /// How a checkpoint of these (older) types would be read by `now`'s:
    /// `Ok` when the same bytes read the same (equal, or only compatible
    /// changes), `Err` with the changes otherwise. `None` when either
    /// description is of another version or unreadable: nothing can be said.
    pub(crate) fn changes_to(&self, now: &TypeDescription) -> Option<Result<(), Vec<String>>> {
        if self.json == now.json {
            return Some(Ok(()));
        }
        let (old, new) = (self.parsed()?, now.parsed()?);
        let mut diff = Diff {
            old: &old,
            new: &new,
            seen: HashSet::new(),
            changes: Vec::new(),
        };
        diff.root("cursor", &old.cursor, &new.cursor);
        diff.root("state", &old.state, &new.state);
        let changes = diff.changes;
        Some(if changes.is_empty() {
            Ok(())
        } else {
            Err(changes)
        })
    }
}

impl fmt::Display for TypeDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(d) = self.parsed() else {
            return write!(f, "(a description this version cannot read) {}", self.json);
        };
        writeln!(f, "cursor: {}", d.cursor)?;
        write!(f, "state: {}", d.state)?;
        for (name, container) in &d.types {
            write!(f, "\n{name} = {container}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TypeDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypeDescription").field(&self.json).finish()
    }
}

/// Why the cursor and state types could not be traced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor and state types cannot be traced: {0}")]
pub struct TraceError(String);

// ---------------------------------------------------------------------------
// The stored form

/// A description, as stored (JSON): the cursor's and state's shapes, and
/// the named types they use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Described {
    v: u32,
    cursor: Shape,
    state: Shape,
    types: BTreeMap<String, Container>,
}

/// A value's shape: a primitive, an anonymous compound or a named type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Shape {
    Unit,
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Option(Box<Shape>),
    Seq(Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
    Tuple(Vec<Shape>),
    Array(Box<Shape>, usize),
    Named(String),
}

/// A named type: a struct or an enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Container {
    UnitStruct,
    Newtype(Shape),
    TupleStruct(Vec<Shape>),
    Struct(Vec<(String, Shape)>),
    /// Variants as (index, name, fields).
    Enum(Vec<(u32, String, Fields)>),
}

/// An enum variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fields {
    Unit,
    Newtype(Shape),
    Tuple(Vec<Shape>),
    Struct(Vec<(String, Shape)>),
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Shape::Unit => "()",
            Shape::Bool => "bool",
            Shape::I8 => "i8",
            Shape::I16 => "i16",
            Shape::I32 => "i32",
            Shape::I64 => "i64",
            Shape::I128 => "i128",
            Shape::U8 => "u8",
            Shape::U16 => "u16",
            Shape::U32 => "u32",
            Shape::U64 => "u64",
            Shape::U128 => "u128",
            Shape::F32 => "f32",
            Shape::F64 => "f64",
            Shape::Char => "char",
            Shape::Str => "string",
            Shape::Bytes => "bytes",
            Shape::Option(inner) => return write!(f, "Option<{inner}>"),
            Shape::Seq(inner) => return write!(f, "Seq<{inner}>"),
            Shape::Map(k, v) => return write!(f, "Map<{k}, {v}>"),
            Shape::Tuple(items) => return write!(f, "({})", list(items)),
            Shape::Array(inner, n) => return write!(f, "[{inner}; {n}]"),
            Shape::Named(name) => name,
        };
        f.write_str(name)
    }
}

fn list(items: &[Shape]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn named_list(fields: &[(String, Shape)]) -> String {
    fields
        .iter()
        .map(|(name, shape)| format!("{name}: {shape}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Container::UnitStruct => f.write_str("struct"),
            Container::Newtype(inner) => write!(f, "struct({inner})"),
            Container::TupleStruct(items) => write!(f, "struct({})", list(items)),
            Container::Struct(fields) => write!(f, "struct {{ {} }}", named_list(fields)),
            Container::Enum(variants) => {
                let mut text = String::new();
                for (i, (_, name, fields)) in variants.iter().enumerate() {
                    if i > 0 {
                        text.push_str(", ");
                    }
                    let _ = match fields {
                        Fields::Unit => write!(text, "{name}"),
                        Fields::Newtype(inner) => write!(text, "{name}({inner})"),
                        Fields::Tuple(items) => write!(text, "{name}({})", list(items)),
                        Fields::Struct(fields) => {
                            write!(text, "{name} {{ {} }}", named_list(fields))
                        }
                    };
                }
                write!(f, "enum {{ {text} }}")
            }
        }
    }
}

impl Container {
    fn kind(&self) -> &'static str {
        match self {
            Container::UnitStruct => "a unit struct",
            Container::Newtype(_) => "a newtype struct",
            Container::TupleStruct(_) => "a tuple struct",
            Container::Struct(_) => "a struct",
            Container::Enum(_) => "an enum",
        }
    }
}

// ---------------------------------------------------------------------------
// Tracing

/// Traces `(Cursor, State)` as one tuple, starting over whenever the
/// registry names nested enums whose variants were not all seen (each pass
/// explores one more variant of each enum it is told about).
fn trace_pair<Cursor: DeserializeOwned, State: DeserializeOwned>(
) -> Result<Described, serde_reflection::Error> {
    let samples = Samples::new();
    let mut enums: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_STARTS {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut root = Format::Unit;
        for _ in 0..MAX_PASSES {
            root = tracer.trace_type_once::<(Cursor, State)>(&samples)?.0;
            let mut incomplete = false;
            for name in &enums {
                incomplete |= tracer.check_incomplete_enum(name).is_some();
            }
            if !incomplete {
                break;
            }
        }
        match tracer.registry() {
            Ok(registry) => return described(&root, &registry),
            Err(serde_reflection::Error::MissingVariants(names)) => {
                let known = enums.len();
                enums.extend(names);
                if enums.len() == known {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(serde_reflection::Error::Custom(
        "the variants of its enums were not all found".into(),
    ))
}

fn described(
    root: &Format,
    registry: &serde_reflection::Registry,
) -> Result<Described, serde_reflection::Error> {
    let Format::Tuple(pair) = root else {
        return Err(serde_reflection::Error::UnknownFormat);
    };
    let [cursor, state] = pair.as_slice() else {
        return Err(serde_reflection::Error::UnknownFormat);
    };
    let types = registry
        .iter()
        .map(|(name, c)| Ok((name.clone(), container(c)?)))
        .collect::<Result<_, serde_reflection::Error>>()?;
    Ok(Described {
        v: VERSION,
        cursor: shape(cursor)?,
        state: shape(state)?,
        types,
    })
}

fn shapes(formats: &[Format]) -> Result<Vec<Shape>, serde_reflection::Error> {
    formats.iter().map(shape).collect()
}

fn fields(named: &[Named<Format>]) -> Result<Vec<(String, Shape)>, serde_reflection::Error> {
    named
        .iter()
        .map(|n| Ok((n.name.clone(), shape(&n.value)?)))
        .collect()
}

fn shape(format: &Format) -> Result<Shape, serde_reflection::Error> {
    Ok(match format {
        Format::Variable(_) => return Err(serde_reflection::Error::UnknownFormat),
        Format::TypeName(name) => Shape::Named(name.clone()),
        Format::Unit => Shape::Unit,
        Format::Bool => Shape::Bool,
        Format::I8 => Shape::I8,
        Format::I16 => Shape::I16,
        Format::I32 => Shape::I32,
        Format::I64 => Shape::I64,
        Format::I128 => Shape::I128,
        Format::U8 => Shape::U8,
        Format::U16 => Shape::U16,
        Format::U32 => Shape::U32,
        Format::U64 => Shape::U64,
        Format::U128 => Shape::U128,
        Format::F32 => Shape::F32,
        Format::F64 => Shape::F64,
        Format::Char => Shape::Char,
        Format::Str => Shape::Str,
        Format::Bytes => Shape::Bytes,
        Format::Option(inner) => Shape::Option(Box::new(shape(inner)?)),
        Format::Seq(inner) => Shape::Seq(Box::new(shape(inner)?)),
        Format::Map { key, value } => Shape::Map(Box::new(shape(key)?), Box::new(shape(value)?)),
        Format::Tuple(items) => Shape::Tuple(shapes(items)?),
        Format::TupleArray { content, size } => Shape::Array(Box::new(shape(content)?), *size),
    })
}

fn container(format: &ContainerFormat) -> Result<Container, serde_reflection::Error> {
    Ok(match format {
        ContainerFormat::UnitStruct => Container::UnitStruct,
        ContainerFormat::NewTypeStruct(inner) => Container::Newtype(shape(inner)?),
        ContainerFormat::TupleStruct(items) => Container::TupleStruct(shapes(items)?),
        ContainerFormat::Struct(named) => Container::Struct(fields(named)?),
        ContainerFormat::Enum(variants) => Container::Enum(
            variants
                .iter()
                .map(|(index, v)| {
                    let f = match &v.value {
                        VariantFormat::Variable(_) => {
                            return Err(serde_reflection::Error::UnknownFormat)
                        }
                        VariantFormat::Unit => Fields::Unit,
                        VariantFormat::NewType(inner) => Fields::Newtype(shape(inner)?),
                        VariantFormat::Tuple(items) => Fields::Tuple(shapes(items)?),
                        VariantFormat::Struct(named) => Fields::Struct(fields(named)?),
                    };
                    Ok((*index, v.name.clone(), f))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The shape of `Cursor` and `State`, traced once per process and pair of
/// types (tracing walks every variant of every enum: a run should not pay
/// for it twice).
pub(crate) fn traced<Cursor, State>() -> Result<TypeDescription, TraceError>
where
    Cursor: DeserializeOwned + 'static,
    State: DeserializeOwned + 'static,
{
    use std::any::TypeId;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};

    type Traced = Result<TypeDescription, TraceError>;
    static TRACED: OnceLock<Mutex<HashMap<TypeId, Traced>>> = OnceLock::new();
    let id = TypeId::of::<(Cursor, State)>();
    let cache = TRACED.get_or_init(Default::default);
    let cached = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .cloned();
    cached.unwrap_or_else(|| {
        let traced = TypeDescription::trace::<Cursor, State>();
        cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, traced.clone());
        traced
    })
}

// ---------------------------------------------------------------------------
// Jobs of steps

/// The serde name of the cursor of a job of steps: an enum of one variant
/// per step, holding that step's cursor.
pub(crate) const STEP_CURSOR: &str = "spotbatch::StepCursor";

impl TypeDescription {
    /// The shape of a job of steps' cursor and state, from its steps' own
    /// (`parts`: each step's name and description, in order), as the steps'
    /// serde impls read them: the cursor an enum [`STEP_CURSOR`] whose
    /// variant `i` (named `variants[i]`) holds step `i`'s cursor; the state
    /// a tuple whose element `i` is step `i`'s state after its encoded
    /// length (`(u64, state)`, as a non-self-describing codec frames it).
    /// Each step's named types are renamed `<step>::<name>`, so that two
    /// steps' types of the same name do not clash.
    pub(crate) fn of_steps(
        parts: &[(&str, &TypeDescription)],
        variants: &[&str],
    ) -> Result<Self, TraceError> {
        let mut types = BTreeMap::new();
        let mut cursors = Vec::with_capacity(parts.len());
        let mut states = Vec::with_capacity(parts.len());
        for (i, ((step, part), variant)) in parts.iter().zip(variants).enumerate() {
            let described = part.parsed().ok_or_else(|| {
                TraceError(format!("the description of step {step:?} cannot be read"))
            })?;
            let rename = |name: &str| format!("{step}::{name}");
            let index = u32::try_from(i).map_err(|e| TraceError(e.to_string()))?;
            cursors.push((
                index,
                (*variant).to_owned(),
                Fields::Newtype(renamed(&described.cursor, &rename)),
            ));
            states.push(Shape::Tuple(vec![
                Shape::U64,
                renamed(&described.state, &rename),
            ]));
            for (name, container) in &described.types {
                types.insert(rename(name), renamed_container(container, &rename));
            }
        }
        types.insert(STEP_CURSOR.to_owned(), Container::Enum(cursors));
        let described = Described {
            v: VERSION,
            cursor: Shape::Named(STEP_CURSOR.to_owned()),
            state: Shape::Tuple(states),
            types,
        };
        let json = serde_json::to_string(&described).map_err(|e| TraceError(e.to_string()))?;
        Ok(Self { json: json.into() })
    }

    /// Step `index`'s part of a description made by [`of_steps`](Self::of_steps):
    /// its cursor and state shapes, with every named type. `None` when this
    /// is not the description of a job of that many steps or more.
    pub(crate) fn step_part(&self, index: usize) -> Option<Self> {
        let d = self.parsed()?;
        let Shape::Named(name) = &d.cursor else {
            return None;
        };
        let Some(Container::Enum(variants)) = d.types.get(name).filter(|_| name == STEP_CURSOR)
        else {
            return None;
        };
        let cursor = variants
            .iter()
            .find(|(i, _, _)| usize::try_from(*i).ok() == Some(index))
            .and_then(|(_, _, fields)| match fields {
                Fields::Newtype(shape) => Some(shape.clone()),
                _ => None,
            })?;
        let Shape::Tuple(states) = &d.state else {
            return None;
        };
        let state = match states.get(index)? {
            Shape::Tuple(framed) => match framed.as_slice() {
                [Shape::U64, state] => state.clone(),
                _ => return None,
            },
            _ => return None,
        };
        let part = Described {
            v: VERSION,
            cursor,
            state,
            types: d.types,
        };
        serde_json::to_string(&part)
            .ok()
            .map(|json| Self { json: json.into() })
    }
}

/// `shape` with each named type `n` renamed `rename(n)`.
fn renamed(shape: &Shape, rename: &impl Fn(&str) -> String) -> Shape {
    let boxed = |s: &Shape| Box::new(renamed(s, rename));
    match shape {
        Shape::Named(name) => Shape::Named(rename(name)),
        Shape::Option(s) => Shape::Option(boxed(s)),
        Shape::Seq(s) => Shape::Seq(boxed(s)),
        Shape::Map(k, v) => Shape::Map(boxed(k), boxed(v)),
        Shape::Tuple(items) => Shape::Tuple(items.iter().map(|s| renamed(s, rename)).collect()),
        Shape::Array(s, n) => Shape::Array(boxed(s), *n),
        other => other.clone(),
    }
}

fn renamed_fields(
    fields: &[(String, Shape)],
    rename: &impl Fn(&str) -> String,
) -> Vec<(String, Shape)> {
    fields
        .iter()
        .map(|(n, s)| (n.clone(), renamed(s, rename)))
        .collect()
}

/// `container` with each named type it refers to renamed.
fn renamed_container(container: &Container, rename: &impl Fn(&str) -> String) -> Container {
    let all = |items: &[Shape]| items.iter().map(|s| renamed(s, rename)).collect();
    match container {
        Container::UnitStruct => Container::UnitStruct,
        Container::Newtype(s) => Container::Newtype(renamed(s, rename)),
        Container::TupleStruct(items) => Container::TupleStruct(all(items)),
        Container::Struct(fields) => Container::Struct(renamed_fields(fields, rename)),
        Container::Enum(variants) => Container::Enum(
            variants
                .iter()
                .map(|(i, name, fields)| {
                    let fields = match fields {
                        Fields::Unit => Fields::Unit,
                        Fields::Newtype(s) => Fields::Newtype(renamed(s, rename)),
                        Fields::Tuple(items) => Fields::Tuple(all(items)),
                        Fields::Struct(f) => Fields::Struct(renamed_fields(f, rename)),
                    };
                    (*i, name.clone(), fields)
                })
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------
// Comparing

/// Walks an old and a new description side by side, noting each change
/// that makes the old bytes read differently, at a path from the top:
/// `Totals.count`, `Totals.pages[]`, `Mode::Paged.0`.
struct Diff<'a> {
    old: &'a Described,
    new: &'a Described,
    /// Pairs of named types already compared (types may be recursive).
    seen: HashSet<(String, String)>,
    changes: Vec<String>,
}

/// `shape` with newtype structs replaced by their content, as the codecs
/// encode them.
fn resolve<'d>(d: &'d Described, mut shape: &'d Shape) -> &'d Shape {
    for _ in 0..64 {
        match shape {
            Shape::Named(name) => match d.types.get(name) {
                Some(Container::Newtype(inner)) => shape = inner,
                _ => return shape,
            },
            _ => return shape,
        }
    }
    shape
}

impl Diff<'_> {
    fn root(&mut self, label: &str, old: &Shape, new: &Shape) {
        // Name the path after the type now, when it is named.
        let path = match resolve(self.new, new) {
            Shape::Named(name) => name.clone(),
            _ => label.to_owned(),
        };
        self.shape(&path, old, new);
    }

    fn change(&mut self, path: &str, what: String) {
        self.changes.push(format!("{path}: {what}"));
    }

    /// Whether `shape` refers to a named type anywhere (so that a change
    /// inside it is worth following to the field).
    fn has_named(shape: &Shape) -> bool {
        match shape {
            Shape::Named(_) => true,
            Shape::Option(s) | Shape::Seq(s) | Shape::Array(s, _) => Self::has_named(s),
            Shape::Map(k, v) => Self::has_named(k) || Self::has_named(v),
            Shape::Tuple(items) => items.iter().any(Self::has_named),
            _ => false,
        }
    }

    fn shape(&mut self, path: &str, old: &Shape, new: &Shape) {
        let (old, new) = (resolve(self.old, old), resolve(self.new, new));
        let deep = Self::has_named(old) || Self::has_named(new);
        match (old, new) {
            (Shape::Named(a), Shape::Named(b)) => self.named(path, a, b),
            (Shape::Option(a), Shape::Option(b)) if deep => self.shape(path, a, b),
            (Shape::Seq(a), Shape::Seq(b)) if deep => self.shape(&format!("{path}[]"), a, b),
            (Shape::Array(a, n), Shape::Array(b, m)) if deep && n == m => {
                self.shape(&format!("{path}[]"), a, b);
            }
            (Shape::Map(ka, va), Shape::Map(kb, vb)) if deep => {
                self.shape(&format!("{path}[key]"), ka, kb);
                self.shape(&format!("{path}[]"), va, vb);
            }
            (Shape::Tuple(a), Shape::Tuple(b)) if deep && a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    self.shape(&format!("{path}.{i}"), x, y);
                }
            }
            _ if !deep && old == new => {}
            _ => {
                let (was, now) = (self.render(self.old, old), self.render(self.new, new));
                self.change(path, format!("was {was}, now {now}"));
            }
        }
    }

    /// A shape for a message: a named type with its kind.
    fn render(&self, d: &Described, shape: &Shape) -> String {
        match shape {
            Shape::Named(name) => match d.types.get(name) {
                Some(c) => format!("{name} ({})", c.kind()),
                None => name.clone(),
            },
            other => other.to_string(),
        }
    }

    fn named(&mut self, path: &str, a: &str, b: &str) {
        if !self.seen.insert((a.to_owned(), b.to_owned())) {
            return;
        }
        let (Some(old), Some(new)) = (self.old.types.get(a), self.new.types.get(b)) else {
            self.change(
                path,
                format!("was {a}, now {b} (a type missing from the description)"),
            );
            return;
        };
        match (old, new) {
            (Container::UnitStruct, Container::UnitStruct) => {}
            (Container::TupleStruct(x), Container::TupleStruct(y)) => self.positional(path, x, y),
            (Container::Struct(x), Container::Struct(y)) => self.fields(path, x, y),
            (Container::Enum(x), Container::Enum(y)) => self.variants(path, x, y),
            _ => self.change(
                path,
                format!("was {a} ({}), now {b} ({})", old.kind(), new.kind()),
            ),
        }
    }

    fn positional(&mut self, path: &str, old: &[Shape], new: &[Shape]) {
        if old.len() != new.len() {
            self.change(path, format!("was ({}), now ({})", list(old), list(new)));
            return;
        }
        for (i, (x, y)) in old.iter().zip(new).enumerate() {
            self.shape(&format!("{path}.{i}"), x, y);
        }
    }

    fn fields(&mut self, path: &str, old: &[(String, Shape)], new: &[(String, Shape)]) {
        let find =
            |fields: &[(String, Shape)], name: &str| fields.iter().position(|(n, _)| n == name);
        for (name, shape) in old {
            if find(new, name).is_none() {
                self.change(&format!("{path}.{name}"), format!("removed (was {shape})"));
            }
        }
        for (name, shape) in new {
            if find(old, name).is_none() {
                self.change(&format!("{path}.{name}"), format!("added ({shape})"));
            }
        }
        let common = |from: &[(String, Shape)], other: &[(String, Shape)]| -> Vec<String> {
            from.iter()
                .filter(|(n, _)| find(other, n).is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        let (was, now) = (common(old, new), common(new, old));
        if was != now {
            self.change(
                path,
                format!(
                    "fields reordered: was ({}), now ({})",
                    was.join(", "),
                    now.join(", ")
                ),
            );
        }
        for (name, shape) in old {
            if let Some(i) = find(new, name) {
                self.shape(&format!("{path}.{name}"), shape, &new[i].1);
            }
        }
    }

    fn variants(
        &mut self,
        path: &str,
        old: &[(u32, String, Fields)],
        new: &[(u32, String, Fields)],
    ) {
        for (index, name, fields) in old {
            match new.iter().find(|(i, _, _)| i == index) {
                None => self.change(&format!("{path}::{name}"), "removed".into()),
                Some((_, now, _)) if now != name => {
                    self.change(path, format!("variant {index} was {name}, now {now}"))
                }
                Some((_, _, now)) => self.variant(&format!("{path}::{name}"), fields, now),
            }
        }
        // Appended variants are compatible: an old checkpoint holds none.
        let last = old.iter().map(|(i, _, _)| *i).max();
        for (index, name, _) in new {
            let known = old.iter().any(|(i, _, _)| i == index);
            if !known && last.is_some_and(|last| *index < last) {
                self.change(
                    &format!("{path}::{name}"),
                    format!("added as variant {index}"),
                );
            }
        }
    }

    fn variant(&mut self, path: &str, old: &Fields, new: &Fields) {
        match (old, new) {
            (Fields::Unit, Fields::Unit) => {}
            (Fields::Newtype(a), Fields::Newtype(b)) => self.shape(path, a, b),
            (Fields::Tuple(a), Fields::Tuple(b)) => self.positional(path, a, b),
            (Fields::Struct(a), Fields::Struct(b)) => self.fields(path, a, b),
            _ => {
                let form = |f: &Fields| match f {
                    Fields::Unit => "no fields".to_owned(),
                    Fields::Newtype(s) => format!("({s})"),
                    Fields::Tuple(items) => format!("({})", list(items)),
                    Fields::Struct(fields) => format!("{{ {} }}", named_list(fields)),
                };
                self.change(path, format!("was {}, now {}", form(old), form(new)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // The types below are only ever traced, never read.
    #![allow(dead_code)]

    use super::*;

    fn describe<C: DeserializeOwned, S: DeserializeOwned>() -> TypeDescription {
        TypeDescription::trace::<C, S>().unwrap()
    }

    /// The changes from the state type `Old` to `New` (cursor `u64` both).
    fn changes<Old: DeserializeOwned, New: DeserializeOwned>() -> Result<(), Vec<String>> {
        describe::<u64, Old>()
            .changes_to(&describe::<u64, New>())
            .expect("comparable")
    }

    mod v1 {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct State {
            pub count: u64,
            pub mean: f64,
            pub mode: Mode,
            pub pages: Vec<Page>,
        }

        #[derive(Deserialize)]
        pub(super) enum Mode {
            Full,
            Since(u64),
            Window { from: u64, to: u64 },
        }

        #[derive(Deserialize)]
        pub(super) struct Page {
            pub token: String,
        }
    }

    mod field_type {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct State {
            pub count: i64,
            pub mean: f64,
            pub mode: super::v1::Mode,
            pub pages: Vec<Page>,
        }

        #[derive(Deserialize)]
        pub(super) struct Page {
            pub token: Option<String>,
        }
    }

    mod reordered {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct State {
            pub mean: f64,
            pub count: u64,
            pub mode: super::v1::Mode,
            pub pages: Vec<super::v1::Page>,
            pub added: u32,
        }
    }

    mod variants {
        use serde::Deserialize;

        /// Renamed (`Totals`), with `Mode`'s variants changed.
        #[derive(Deserialize)]
        pub(super) struct Totals {
            pub count: u64,
            pub mean: f64,
            pub mode: Mode,
            pub pages: Vec<super::v1::Page>,
        }

        #[derive(Deserialize)]
        pub(super) enum Mode {
            Full,
            Window { from: u64, to: u64 },
            Since(u64),
        }
    }

    mod appended {
        use serde::Deserialize;

        /// The same shape as `v1::State` under another name, a newtype
        /// around the count, and a variant appended to `Mode`.
        #[derive(Deserialize)]
        pub(super) struct Renamed {
            pub count: Count,
            pub mean: f64,
            pub mode: Mode,
            pub pages: Vec<super::v1::Page>,
        }

        #[derive(Deserialize)]
        pub(super) struct Count(pub u64);

        #[derive(Deserialize)]
        pub(super) enum Mode {
            Full,
            Since(u64),
            Window { from: u64, to: u64 },
            Last(u32),
        }
    }

    #[test]
    fn describes_every_field_and_variant() {
        let text = describe::<u64, v1::State>().to_string();
        assert_eq!(
            text,
            "cursor: u64\n\
             state: State\n\
             Mode = enum { Full, Since(u64), Window { from: u64, to: u64 } }\n\
             Page = struct { token: string }\n\
             State = struct { count: u64, mean: f64, mode: Mode, pages: Seq<Page> }"
        );
        // Traced once more: the same description, byte for byte.
        assert_eq!(describe::<u64, v1::State>(), describe::<u64, v1::State>());
        assert_eq!(describe::<u64, v1::State>().fingerprint().len(), 8);
    }

    #[test]
    fn a_changed_field_type_is_named_with_its_path() {
        assert_eq!(
            changes::<v1::State, field_type::State>(),
            Err(vec![
                "State.count: was u64, now i64".to_owned(),
                "State.pages[].token: was string, now Option<string>".to_owned(),
            ])
        );
        assert_eq!(changes::<v1::State, v1::State>(), Ok(()));
    }

    #[test]
    fn reordered_added_and_removed_fields_are_changes() {
        assert_eq!(
            changes::<v1::State, reordered::State>(),
            Err(vec![
                "State.added: added (u32)".to_owned(),
                "State: fields reordered: was (count, mean, mode, pages), now (mean, count, mode, pages)"
                    .to_owned(),
            ])
        );
        assert_eq!(
            changes::<reordered::State, v1::State>().unwrap_err()[0],
            "State.added: removed (was u32)"
        );
    }

    #[test]
    fn reordered_variants_are_changes() {
        assert_eq!(
            changes::<v1::State, variants::Totals>(),
            Err(vec![
                "Totals.mode: variant 1 was Since, now Window".to_owned(),
                "Totals.mode: variant 2 was Window, now Since".to_owned(),
            ])
        );
    }

    #[test]
    fn renames_newtypes_and_appended_variants_read_the_same() {
        assert_eq!(changes::<v1::State, appended::Renamed>(), Ok(()));
        // The other way, the variant is missing: an old checkpoint may hold it.
        assert_eq!(
            changes::<appended::Renamed, v1::State>(),
            Err(vec!["State.mode::Last: removed".to_owned()])
        );
    }

    #[test]
    fn the_cursor_is_compared_too() {
        let changed = describe::<u64, ()>()
            .changes_to(&describe::<String, ()>())
            .unwrap();
        assert_eq!(changed, Err(vec!["cursor: was u64, now string".to_owned()]));
    }

    #[test]
    fn recursive_types_are_traced() {
        #[derive(Deserialize)]
        enum List {
            Nil,
            Cons(u32, Box<List>),
        }
        let text = describe::<u64, List>().to_string();
        assert!(
            text.contains("List = enum { Nil, Cons(u32, List) }"),
            "{text}"
        );
        assert_eq!(
            describe::<u64, List>().changes_to(&describe::<u64, List>()),
            Some(Ok(()))
        );
    }

    #[test]
    fn types_that_need_a_self_describing_format_cannot_be_traced() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            A(u64),
            B(String),
        }
        #[derive(Deserialize)]
        struct Flat {
            #[serde(flatten)]
            inner: BTreeMap<String, u64>,
        }
        assert!(TypeDescription::trace::<u64, serde_json::Value>().is_err());
        assert!(TypeDescription::trace::<Either, ()>().is_err());
        let err = TypeDescription::trace::<u64, Flat>().unwrap_err();
        assert!(err.to_string().contains("cannot be traced"), "{err}");
    }

    #[test]
    fn a_description_of_another_version_compares_to_nothing() {
        let now = describe::<u64, u64>();
        let other = TypeDescription::from_json(now.as_json().replace("\"v\":1", "\"v\":99"));
        assert_eq!(other.changes_to(&now), None);
        assert_eq!(TypeDescription::from_json("{").changes_to(&now), None);
        assert!(other.to_string().contains("cannot read"));
    }
}

//! Stored values as JSON (feature `json`): step outcomes, inputs, outputs
//! and event payloads are stored in bincode, which is not self-describing;
//! the manifest records each site's serde [`Shape`]. [`JsonShape`] reads a
//! shape's text back into a schema and uses it to decode stored bytes into a
//! [`serde_json::Value`] and to encode a JSON value into exactly the bytes
//! the typed value would have been stored as.
//!
//! The JSON follows `serde_json`'s conventions for the typed value: a
//! struct is an object, a newtype struct its content, a tuple or tuple
//! struct an array, a unit or unit struct `null`, `None` is `null` and
//! `Some(x)` is `x`, a unit variant is its name (`"A"`), other variants are
//! one-key objects (`{"B": 5}`, `{"C": [1, 2]}`, `{"D": {"x": 1}}`), a map
//! is an object whose keys are strings (numbers and other keys are written
//! as their JSON text), bytes are an array of numbers, and 128-bit integers
//! out of the 64-bit range are strings.
//!
//! Limits, stated plainly: a shape that could not be traced (`untraceable
//! ...`) cannot be decoded. The shape text does not name the container a
//! recursive reference (`rec Tree`) points to; it is resolved when exactly
//! one enclosing struct, enum or newtype can be meant, and refused as
//! ambiguous otherwise. A one-element tuple variant is read as a newtype
//! variant (the text is the same and so are the bytes).

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{
    self, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleVariant,
};
use serde_json::{Map, Number, Value};

use crate::codec;
use crate::manifest::{Shape, SiteTypes};

/// Why a shape or a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The type could not be traced: its shape is only its Rust name.
    #[error("`{shape}` could not be traced, so its values cannot be shown or written as JSON")]
    Untraceable {
        /// The shape's text.
        shape: String,
    },
    /// The shape text could not be read back (or holds a part that cannot
    /// be decoded: an ambiguous recursive reference, an unknown type).
    #[error("shape `{shape}` cannot be used for JSON: {reason}")]
    Shape {
        /// The shape's text.
        shape: String,
        /// What is wrong.
        reason: String,
    },
    /// The stored bytes do not decode with the shape.
    #[error("stored value does not decode as `{shape}`: {reason}")]
    Decode {
        /// The shape's text.
        shape: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The JSON value does not fit the shape.
    #[error("JSON value does not fit `{shape}`: {reason}")]
    Encode {
        /// The shape's text.
        shape: String,
        /// Where and what: `at .items[2].cents: expected u64, got "abc"`.
        reason: String,
    },
}

/// One node of a parsed shape.
#[derive(Debug, Clone, PartialEq)]
enum Node {
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
    Option(usize),
    Seq(usize),
    Array(usize, usize),
    Map(usize, usize),
    Tuple(Vec<usize>),
    UnitStruct,
    NewType(usize),
    Struct(Vec<(String, usize)>),
    Enum(Vec<(String, Variant)>),
    /// A recursive reference, resolved to the node it points to.
    Ref(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Variant {
    Unit,
    NewType(usize),
    Tuple(Vec<usize>),
    Struct(Vec<(String, usize)>),
}

/// A shape read back from its text, ready to decode and encode values.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use durable_runtime::json::JsonShape;
/// use durable_runtime::manifest::shape_of;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Approval { approved: bool, by: String }
///
/// let shape = JsonShape::parse(&shape_of::<Approval>()).unwrap();
/// let bytes = shape.encode(&serde_json::json!({"approved": true, "by": "ana"})).unwrap();
/// assert_eq!(shape.decode(&bytes).unwrap()["by"], "ana");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JsonShape {
    nodes: Vec<Node>,
    root: usize,
    text: String,
}

impl JsonShape {
    /// Reads `shape`'s text into a schema.
    pub fn parse(shape: &Shape) -> Result<JsonShape, JsonError> {
        Self::parse_text(&shape.text, shape.traced)
    }

    /// The schema of a step's stored outcome, `Result<value, error>`.
    pub fn of_step(types: &SiteTypes) -> Result<JsonShape, JsonError> {
        let Some(error) = &types.error else {
            return Self::parse(&types.value);
        };
        let text = format!("enum {{Ok({}), Err({})}}", types.value.text, error.text);
        let mut nodes = Vec::new();
        let ok = parse_into(&mut nodes, &types.value.text, types.value.traced)?;
        let err = parse_into(&mut nodes, &error.text, error.traced)?;
        nodes.push(Node::Enum(vec![
            ("Ok".into(), Variant::NewType(ok)),
            ("Err".into(), Variant::NewType(err)),
        ]));
        Ok(JsonShape {
            root: nodes.len() - 1,
            nodes,
            text,
        })
    }

    fn parse_text(text: &str, traced: bool) -> Result<JsonShape, JsonError> {
        let mut nodes = Vec::new();
        let root = parse_into(&mut nodes, text, traced)?;
        Ok(JsonShape {
            nodes,
            root,
            text: text.to_string(),
        })
    }

    /// The shape's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decodes a stored value (as the engine stores it: a versioned
    /// envelope around bincode) into JSON.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, JsonError> {
        codec::decode_seed(
            bytes,
            Seed {
                shape: self,
                node: self.root,
            },
        )
        .map_err(|e| JsonError::Decode {
            shape: self.text.clone(),
            reason: e.to_string(),
        })
    }

    /// Encodes `value` into the bytes the typed value would be stored as.
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, JsonError> {
        let error = std::cell::RefCell::new(None);
        codec::encode(&Shaped {
            shape: self,
            node: self.root,
            value,
            path: String::new(),
            error: &error,
        })
        .map_err(|reason| JsonError::Encode {
            shape: self.text.clone(),
            reason: error.take().unwrap_or(reason),
        })
    }

    fn node(&self, mut index: usize) -> &Node {
        loop {
            match &self.nodes[index] {
                Node::Ref(to) => index = *to,
                node => return node,
            }
        }
    }
}

// ---------------------------------------------------------------- parsing

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    nodes: &'a mut Vec<Node>,
    /// Enclosing containers that a `rec` may point to.
    containers: Vec<usize>,
    /// `rec` references to resolve: (node, name, candidates).
    recs: Vec<(usize, String, Vec<usize>)>,
}

fn parse_into(nodes: &mut Vec<Node>, text: &str, traced: bool) -> Result<usize, JsonError> {
    if !traced || text.starts_with("untraceable ") {
        return Err(JsonError::Untraceable {
            shape: text.to_string(),
        });
    }
    let mut parser = Parser {
        text,
        pos: 0,
        nodes,
        containers: Vec::new(),
        recs: Vec::new(),
    };
    let fail = |reason: String| JsonError::Shape {
        shape: text.to_string(),
        reason,
    };
    let root = parser.ty().map_err(fail)?;
    if parser.pos != text.len() {
        return Err(fail(format!("unexpected text at byte {}", parser.pos)));
    }
    for (node, name, candidates) in std::mem::take(&mut parser.recs) {
        match candidates.as_slice() {
            [one] => parser.nodes[node] = Node::Ref(*one),
            [] => return Err(fail(format!("`rec {name}` points to no enclosing type"))),
            _ => {
                return Err(fail(format!(
                    "`rec {name}` may point to {} enclosing types; the shape text does not say which",
                    candidates.len()
                )));
            }
        }
    }
    Ok(root)
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected `{token}` at byte {}", self.pos))
        }
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Reserves a node for a container, so that `rec` inside can point to it.
    fn open_container(&mut self) -> usize {
        let at = self.push(Node::Unit);
        self.containers.push(at);
        at
    }

    fn close_container(&mut self, at: usize, node: Node) -> usize {
        self.containers.pop();
        self.nodes[at] = node;
        at
    }

    /// A name up to one of `stops`.
    fn name(&mut self, stops: &[char]) -> Result<String, String> {
        let rest = self.rest();
        let end = rest.find(|c| stops.contains(&c)).unwrap_or(rest.len());
        if end == 0 {
            return Err(format!("expected a name at byte {}", self.pos));
        }
        let name = rest[..end].to_string();
        self.pos += end;
        Ok(name)
    }

    fn list<T>(
        &mut self,
        close: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut items = Vec::new();
        if self.eat(close) {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat(close) {
                return Ok(items);
            }
            self.expect(", ")?;
        }
    }

    fn fields(&mut self) -> Result<Vec<(String, usize)>, String> {
        self.list("}", |p| {
            let name = p.name(&[':'])?;
            p.expect(": ")?;
            Ok((name, p.ty()?))
        })
    }

    fn ty(&mut self) -> Result<usize, String> {
        const SIMPLE: &[(&str, Node)] = &[
            ("()", Node::Unit),
            ("bool", Node::Bool),
            ("i128", Node::I128),
            ("i16", Node::I16),
            ("i32", Node::I32),
            ("i64", Node::I64),
            ("i8", Node::I8),
            ("u128", Node::U128),
            ("u16", Node::U16),
            ("u32", Node::U32),
            ("u64", Node::U64),
            ("u8", Node::U8),
            ("f32", Node::F32),
            ("f64", Node::F64),
            ("char", Node::Char),
            ("str", Node::Str),
            ("bytes", Node::Bytes),
            ("unit", Node::UnitStruct),
        ];
        if self.eat("Option<") {
            let inner = self.ty()?;
            self.expect(">")?;
            return Ok(self.push(Node::Option(inner)));
        }
        if self.eat("Map<") {
            let key = self.ty()?;
            self.expect(", ")?;
            let value = self.ty()?;
            self.expect(">")?;
            return Ok(self.push(Node::Map(key, value)));
        }
        if self.eat("newtype(") {
            let at = self.open_container();
            let inner = self.ty()?;
            self.expect(")")?;
            return Ok(self.close_container(at, Node::NewType(inner)));
        }
        if self.eat("enum {") {
            let at = self.open_container();
            let variants = self.list("}", |p| {
                let name = p.name(&['(', ' ', ',', '}'])?;
                let variant = if p.eat("(?)") {
                    return Err(format!("variant `{name}` was not traced"));
                } else if p.eat("(") {
                    let mut items = p.list(")", Self::ty)?;
                    if items.len() == 1 {
                        Variant::NewType(items.remove(0))
                    } else {
                        Variant::Tuple(items)
                    }
                } else if p.eat(" {") {
                    Variant::Struct(p.fields()?)
                } else {
                    Variant::Unit
                };
                Ok((name, variant))
            })?;
            return Ok(self.close_container(at, Node::Enum(variants)));
        }
        if self.eat("{") {
            let at = self.open_container();
            let fields = self.fields()?;
            return Ok(self.close_container(at, Node::Struct(fields)));
        }
        if self.eat("[") {
            let inner = self.ty()?;
            if self.eat("; ") {
                let size = self.name(&[']'])?;
                self.expect("]")?;
                let size = size
                    .parse()
                    .map_err(|_| format!("array size `{size}` is not a number"))?;
                return Ok(self.push(Node::Array(inner, size)));
            }
            self.expect("]")?;
            return Ok(self.push(Node::Seq(inner)));
        }
        if self.eat("rec ") {
            let name = self.name(&[',', ')', '>', '}', ']'])?;
            let at = self.push(Node::Unit);
            self.recs.push((at, name, self.containers.clone()));
            return Ok(at);
        }
        if self.eat("unknown ") {
            return Err("a type that was not traced (`unknown`)".into());
        }
        if self.rest().starts_with('?') {
            return Err("a type that was not traced (`?`)".into());
        }
        // `()` is the unit type; `(` followed by items is a tuple (or a
        // tuple struct: same bytes, same JSON).
        if self.rest().starts_with('(') && !self.rest().starts_with("()") {
            self.pos += 1;
            let at = self.open_container();
            let items = self.list(")", Self::ty)?;
            return Ok(self.close_container(at, Node::Tuple(items)));
        }
        for (token, node) in SIMPLE {
            if self.rest().starts_with(token) {
                // `u8` must not match the start of `u8x`: a token ends here.
                let after = self.rest()[token.len()..].chars().next();
                if after.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                    self.pos += token.len();
                    return Ok(self.push(node.clone()));
                }
            }
        }
        Err(format!("unknown type at byte {}", self.pos))
    }
}

// ---------------------------------------------------------------- decoding

#[derive(Clone, Copy)]
struct Seed<'a> {
    shape: &'a JsonShape,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let v = ValueVisitor(self);
        match self.shape.node(self.node) {
            Node::Unit => d.deserialize_unit(v),
            Node::Bool => d.deserialize_bool(v),
            Node::I8 => d.deserialize_i8(v),
            Node::I16 => d.deserialize_i16(v),
            Node::I32 => d.deserialize_i32(v),
            Node::I64 => d.deserialize_i64(v),
            Node::I128 => d.deserialize_i128(v),
            Node::U8 => d.deserialize_u8(v),
            Node::U16 => d.deserialize_u16(v),
            Node::U32 => d.deserialize_u32(v),
            Node::U64 => d.deserialize_u64(v),
            Node::U128 => d.deserialize_u128(v),
            Node::F32 => d.deserialize_f32(v),
            Node::F64 => d.deserialize_f64(v),
            Node::Char => d.deserialize_char(v),
            Node::Str => d.deserialize_string(v),
            Node::Bytes => d.deserialize_byte_buf(v),
            Node::Option(_) => d.deserialize_option(v),
            Node::Seq(_) => d.deserialize_seq(v),
            Node::Array(_, n) => d.deserialize_tuple(*n, v),
            Node::Map(..) => d.deserialize_map(v),
            Node::Tuple(items) => d.deserialize_tuple(items.len(), v),
            Node::UnitStruct => d.deserialize_unit_struct("", v),
            Node::NewType(_) => d.deserialize_newtype_struct("", v),
            // Bincode reads a struct as a tuple of its fields.
            Node::Struct(fields) => d.deserialize_tuple(fields.len(), v),
            Node::Enum(_) => d.deserialize_enum("", &[], v),
            Node::Ref(_) => unreachable!("JsonShape::node resolves references"),
        }
    }
}

struct ValueVisitor<'a>(Seed<'a>);

impl ValueVisitor<'_> {
    fn child(&self, node: usize) -> Seed<'_> {
        Seed {
            shape: self.0.shape,
            node,
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a value of the shape `{}`", self.0.shape.text)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
        Ok(float(f64::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(float(v))
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(v.iter().map(|b| Value::from(*b)).collect()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0.shape.node(self.0.node) {
            Node::Option(inner) => self.child(*inner).deserialize(d),
            _ => Err(de::Error::custom("an option where the shape has none")),
        }
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0.shape.node(self.0.node) {
            Node::NewType(inner) => self.child(*inner).deserialize(d),
            _ => Err(de::Error::custom("a newtype where the shape has none")),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let missing = || de::Error::custom("the value ends early");
        match self.0.shape.node(self.0.node) {
            Node::Seq(inner) => {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element_seed(self.child(*inner))? {
                    out.push(v);
                }
                Ok(Value::Array(out))
            }
            Node::Array(inner, n) => (0..*n)
                .map(|_| {
                    seq.next_element_seed(self.child(*inner))?
                        .ok_or_else(missing)
                })
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Node::Tuple(items) => items
                .iter()
                .map(|i| seq.next_element_seed(self.child(*i))?.ok_or_else(missing))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Node::Struct(fields) => object(fields, &mut seq, self.0.shape),
            _ => Err(de::Error::custom("a sequence where the shape has none")),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Node::Map(key, value) = self.0.shape.node(self.0.node) else {
            return Err(de::Error::custom("a map where the shape has none"));
        };
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(self.child(*key))? {
            let v = map.next_value_seed(self.child(*value))?;
            out.insert(key_text(k), v);
        }
        Ok(Value::Object(out))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let Node::Enum(variants) = self.0.shape.node(self.0.node) else {
            return Err(de::Error::custom("an enum where the shape has none"));
        };
        let (index, access) = data.variant_seed(IndexSeed)?;
        let (name, variant) = variants
            .get(index as usize)
            .ok_or_else(|| de::Error::custom(format!("variant index {index} is unknown")))?;
        let content = match variant {
            Variant::Unit => {
                access.unit_variant()?;
                return Ok(Value::String(name.clone()));
            }
            Variant::NewType(inner) => access.newtype_variant_seed(self.child(*inner))?,
            Variant::Tuple(items) => access.tuple_variant(
                items.len(),
                ItemsVisitor {
                    shape: self.0.shape,
                    items,
                },
            )?,
            // Bincode reads a struct variant as a tuple of its fields.
            Variant::Struct(fields) => access.tuple_variant(
                fields.len(),
                FieldsVisitor {
                    shape: self.0.shape,
                    fields,
                },
            )?,
        };
        let mut out = Map::new();
        out.insert(name.clone(), content);
        Ok(Value::Object(out))
    }
}

/// A tuple variant's items.
struct ItemsVisitor<'a> {
    shape: &'a JsonShape,
    items: &'a [usize],
}

impl<'de> Visitor<'de> for ItemsVisitor<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} items", self.items.len())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.items
            .iter()
            .map(|i| {
                seq.next_element_seed(Seed {
                    shape: self.shape,
                    node: *i,
                })?
                .ok_or_else(|| de::Error::custom("the value ends early"))
            })
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }
}

/// A struct variant's fields.
struct FieldsVisitor<'a> {
    shape: &'a JsonShape,
    fields: &'a [(String, usize)],
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fields", self.fields.len())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        object(self.fields, &mut seq, self.shape)
    }
}

fn object<'de, A: SeqAccess<'de>>(
    fields: &[(String, usize)],
    seq: &mut A,
    shape: &JsonShape,
) -> Result<Value, A::Error> {
    let mut out = Map::new();
    for (name, node) in fields {
        let v = seq
            .next_element_seed(Seed { shape, node: *node })?
            .ok_or_else(|| de::Error::custom(format!("field `{name}` is missing")))?;
        out.insert(name.clone(), v);
    }
    Ok(Value::Object(out))
}

/// The text of a map key: a string as it is, anything else as its JSON.
fn key_text(key: Value) -> String {
    match key {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Reads a variant index.
struct IndexSeed;

impl<'de> DeserializeSeed<'de> for IndexSeed {
    type Value = u32;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u32;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a variant index")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
                u32::try_from(v).map_err(|_| E::custom("variant index out of range"))
            }
        }
        d.deserialize_u32(V)
    }
}

// ---------------------------------------------------------------- encoding

/// A JSON value serialized as the shape says; used only with bincode,
/// which ignores the (empty) struct, field and variant names.
struct Shaped<'a> {
    shape: &'a JsonShape,
    node: usize,
    value: &'a Value,
    path: String,
    /// The first complaint, kept in words (the encoder's error type
    /// would only quote it).
    error: &'a std::cell::RefCell<Option<String>>,
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Shaped<'a> {
    fn child(&self, node: usize, value: &'a Value, step: impl std::fmt::Display) -> Shaped<'a> {
        Shaped {
            shape: self.shape,
            node,
            value,
            path: format!("{}{step}", self.path),
            error: self.error,
        }
    }

    fn custom<E: ser::Error>(&self, message: String) -> E {
        let mut first = self.error.borrow_mut();
        if first.is_none() {
            *first = Some(message.clone());
        }
        E::custom(message)
    }

    fn fail<E: ser::Error>(&self, expected: &str) -> E {
        let at = if self.path.is_empty() {
            String::new()
        } else {
            format!("at {}: ", self.path)
        };
        self.custom(format!("{at}expected {expected}, got {}", kind(self.value)))
    }

    fn int<E: ser::Error>(&self, expected: &str) -> Result<i128, E> {
        match self.value {
            // Only 128-bit integers are written as strings.
            Value::String(_) if expected != "i128" => Err(self.fail(expected)),
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .ok_or_else(|| self.fail(expected)),
            Value::String(s) => s.parse().map_err(|_| self.fail(expected)),
            _ => Err(self.fail(expected)),
        }
    }

    fn array<E: ser::Error>(&self, len: Option<usize>, expected: &str) -> Result<&'a [Value], E> {
        match self.value {
            Value::Array(items) if len.is_none_or(|n| n == items.len()) => Ok(items),
            _ => Err(self.fail(expected)),
        }
    }

    fn fields<E: ser::Error>(
        &self,
        fields: &[(String, usize)],
    ) -> Result<Vec<(usize, &'a Value, String)>, E> {
        let Value::Object(map) = self.value else {
            return Err(self.fail("an object"));
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !fields.iter().any(|(name, _)| name == *k))
        {
            return Err(self.custom(format!(
                "at {}: unknown field `{unknown}` (fields: {})",
                if self.path.is_empty() {
                    "."
                } else {
                    &self.path
                },
                fields
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        static NULL: Value = Value::Null;
        fields
            .iter()
            .map(|(name, node)| match map.get(name) {
                Some(v) => Ok((*node, v, format!(".{name}"))),
                // A missing optional field is `None`, as serde derive reads it.
                None if matches!(self.shape.node(*node), Node::Option(_)) => {
                    Ok((*node, &NULL, format!(".{name}")))
                }
                None => Err(self.custom(format!(
                    "at {}: field `{name}` is missing",
                    if self.path.is_empty() {
                        "."
                    } else {
                        &self.path
                    }
                ))),
            })
            .collect()
    }
}

macro_rules! int {
    ($self:ident, $s:ident, $t:ty, $method:ident, $name:literal) => {{
        let v = $self.int::<S::Error>($name)?;
        let v = <$t>::try_from(v).map_err(|_| $self.fail::<S::Error>($name))?;
        $s.$method(v)
    }};
}

impl ser::Serialize for Shaped<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value = self.value;
        match self.shape.node(self.node) {
            Node::Unit => match value {
                Value::Null => s.serialize_unit(),
                Value::Array(a) if a.is_empty() => s.serialize_unit(),
                _ => Err(self.fail("null")),
            },
            Node::Bool => s.serialize_bool(value.as_bool().ok_or_else(|| self.fail("a bool"))?),
            Node::I8 => int!(self, s, i8, serialize_i8, "i8"),
            Node::I16 => int!(self, s, i16, serialize_i16, "i16"),
            Node::I32 => int!(self, s, i32, serialize_i32, "i32"),
            Node::I64 => int!(self, s, i64, serialize_i64, "i64"),
            Node::I128 => int!(self, s, i128, serialize_i128, "i128"),
            Node::U8 => int!(self, s, u8, serialize_u8, "u8"),
            Node::U16 => int!(self, s, u16, serialize_u16, "u16"),
            Node::U32 => int!(self, s, u32, serialize_u32, "u32"),
            Node::U64 => int!(self, s, u64, serialize_u64, "u64"),
            Node::U128 => {
                let v: u128 = match value {
                    Value::Number(n) => n.as_u64().map(u128::from),
                    Value::String(t) => t.parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| self.fail("u128"))?;
                s.serialize_u128(v)
            }
            #[allow(clippy::cast_possible_truncation)]
            Node::F32 => s.serialize_f32(value.as_f64().ok_or_else(|| self.fail("f32"))? as f32),
            Node::F64 => s.serialize_f64(value.as_f64().ok_or_else(|| self.fail("f64"))?),
            Node::Char => {
                let mut chars = value.as_str().unwrap_or_default().chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => s.serialize_char(c),
                    _ => Err(self.fail("one character")),
                }
            }
            Node::Str => s.serialize_str(value.as_str().ok_or_else(|| self.fail("a string"))?),
            Node::Bytes => {
                let bytes = self
                    .array::<S::Error>(None, "an array of bytes")?
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| self.fail("an array of bytes"))?;
                s.serialize_bytes(&bytes)
            }
            Node::Option(inner) => match value {
                Value::Null => s.serialize_none(),
                _ => s.serialize_some(&Shaped {
                    shape: self.shape,
                    node: *inner,
                    value,
                    path: self.path.clone(),
                    error: self.error,
                }),
            },
            Node::Seq(inner) => {
                let items = self.array::<S::Error>(None, "an array")?;
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for (i, item) in items.iter().enumerate() {
                    seq.serialize_element(&self.child(*inner, item, format!("[{i}]")))?;
                }
                seq.end()
            }
            Node::Array(inner, n) => {
                let items = self.array::<S::Error>(Some(*n), &format!("an array of {n}"))?;
                let mut tuple = s.serialize_tuple(*n)?;
                for (i, item) in items.iter().enumerate() {
                    tuple.serialize_element(&self.child(*inner, item, format!("[{i}]")))?;
                }
                tuple.end()
            }
            Node::Tuple(nodes) => {
                let n = nodes.len();
                let items = self.array::<S::Error>(Some(n), &format!("an array of {n}"))?;
                let mut tuple = s.serialize_tuple(n)?;
                for (i, (node, item)) in nodes.iter().zip(items).enumerate() {
                    tuple.serialize_element(&self.child(*node, item, format!("[{i}]")))?;
                }
                tuple.end()
            }
            Node::Map(key, val) => {
                // An object (keys as text), or an array of [key, value] pairs.
                let pairs: Vec<(Value, &Value)> = match value {
                    Value::Object(map) => map
                        .iter()
                        .map(|(k, v)| (key_value(self.shape.node(*key), k), v))
                        .collect(),
                    Value::Array(items) => items
                        .iter()
                        .map(|pair| match pair.as_array().map(Vec::as_slice) {
                            Some([k, v]) => Ok((k.clone(), v)),
                            _ => Err(self.fail::<S::Error>("an object or [key, value] pairs")),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(self.fail("an object")),
                };
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in &pairs {
                    let step = format!("[{}]", key_text(k.clone()));
                    map.serialize_key(&self.child(*key, k, &step))?;
                    map.serialize_value(&self.child(*val, v, &step))?;
                }
                map.end()
            }
            Node::UnitStruct => match value {
                Value::Null => s.serialize_unit_struct(""),
                _ => Err(self.fail("null")),
            },
            Node::NewType(inner) => s.serialize_newtype_struct(
                "",
                &Shaped {
                    shape: self.shape,
                    node: *inner,
                    value,
                    path: self.path.clone(),
                    error: self.error,
                },
            ),
            Node::Struct(fields) => {
                let values = self.fields::<S::Error>(fields)?;
                let mut st = s.serialize_struct("", values.len())?;
                for (node, v, step) in &values {
                    st.serialize_field("", &self.child(*node, v, step))?;
                }
                st.end()
            }
            Node::Enum(variants) => {
                let names = || {
                    variants
                        .iter()
                        .map(|(n, _)| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (name, content) = match value {
                    Value::String(name) => (name.as_str(), None),
                    Value::Object(map) if map.len() == 1 => {
                        let (k, v) = map.iter().next().expect("one entry");
                        (k.as_str(), Some(v))
                    }
                    _ => {
                        return Err(self.fail(&format!(
                            "a variant name or a one-key object (variants: {})",
                            names()
                        )));
                    }
                };
                let Some(index) = variants.iter().position(|(n, _)| n == name) else {
                    return Err(self.fail(&format!("one of the variants {}", names())));
                };
                let index_u32 = u32::try_from(index).map_err(|_| self.fail("a variant"))?;
                let step = format!(".{name}");
                match (&variants[index].1, content) {
                    (Variant::Unit, None | Some(Value::Null)) => {
                        s.serialize_unit_variant("", index_u32, "")
                    }
                    (Variant::NewType(inner), Some(v)) => s.serialize_newtype_variant(
                        "",
                        index_u32,
                        "",
                        &self.child(*inner, v, &step),
                    ),
                    (Variant::Tuple(nodes), Some(v)) => {
                        let inner = self.child(usize::MAX, v, &step);
                        let n = nodes.len();
                        let items =
                            inner.array::<S::Error>(Some(n), &format!("an array of {n}"))?;
                        let mut tv = s.serialize_tuple_variant("", index_u32, "", n)?;
                        for (i, (node, item)) in nodes.iter().zip(items).enumerate() {
                            tv.serialize_field(&inner.child(*node, item, format!("[{i}]")))?;
                        }
                        tv.end()
                    }
                    (Variant::Struct(fields), Some(v)) => {
                        let inner = self.child(usize::MAX, v, &step);
                        let values = inner.fields::<S::Error>(fields)?;
                        let mut sv = s.serialize_struct_variant("", index_u32, "", values.len())?;
                        for (node, v, step) in &values {
                            sv.serialize_field("", &inner.child(*node, v, step))?;
                        }
                        sv.end()
                    }
                    _ => Err(self.fail(&format!("variant `{name}` with its content"))),
                }
            }
            Node::Ref(_) => unreachable!("JsonShape::node resolves references"),
        }
    }
}

/// A map key written as text, read back as the key type asks.
fn key_value(node: &Node, text: &str) -> Value {
    match node {
        Node::Str | Node::Char => Value::String(text.to_string()),
        _ => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize, de::DeserializeOwned};
    use serde_json::json;

    use super::*;
    use crate::manifest::{shape_of, step_types, wait_types};

    /// Decoding the stored bytes of `value` gives what `serde_json` gives
    /// for the typed value, and encoding that JSON gives the stored bytes.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
        value: T,
    ) -> Value {
        let shape = JsonShape::parse(&shape_of::<T>())
            .unwrap_or_else(|e| panic!("{}: {e}", std::any::type_name::<T>()));
        let bytes = codec::encode(&value).unwrap();
        let decoded = shape.decode(&bytes).unwrap();
        // serde_json refuses 128-bit integers out of the 64-bit range
        // (written here as strings); everything else must agree with it.
        if let Ok(expected) = serde_json::to_value(&value) {
            assert_eq!(decoded, expected, "{}", shape.text);
        }
        let encoded = shape.encode(&decoded).unwrap();
        assert_eq!(encoded, bytes, "{}", shape.text);
        assert_eq!(codec::decode::<T>(&encoded).unwrap(), value);
        decoded
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Price {
        cents: u64,
        tax_cents: i32,
        currency: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Decision {
        Approve,
        Reject(String),
        Escalate { to: String, level: u8 },
        Split(u32, u32),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        lines: Vec<(String, u32)>,
        price: Option<Price>,
        // An enum reached only through a `Vec` is traced with its first
        // variant only (a limit of the manifest's tracing), so it is also
        // a field here.
        first: Decision,
        decisions: Vec<Decision>,
        tags: BTreeMap<String, Vec<bool>>,
        note: Option<String>,
        code: char,
        ratio: f64,
        small: f32,
        big: u128,
        neg: i128,
        bytes: [u8; 3],
        nothing: (),
        marker: Marker,
        wrapped: Wrapper,
        pair: Pair,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Marker;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapper(u16);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(i8, String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Box<Tree>, Box<Tree>),
    }

    #[test]
    fn primitives() {
        round_trip(true);
        round_trip(-5i8);
        round_trip(300i16);
        round_trip(-70_000i32);
        round_trip(i64::MIN);
        round_trip(u8::MAX);
        round_trip(u16::MAX);
        round_trip(u32::MAX);
        round_trip(u64::MAX);
        round_trip(1.5f64);
        round_trip(0.25f32);
        round_trip('é');
        round_trip("héllo".to_string());
        round_trip(());
        assert_eq!(round_trip(u128::MAX), json!(u128::MAX.to_string()));
    }

    #[test]
    fn structs_enums_options_vecs_maps_tuples() {
        round_trip(Price {
            cents: 1250,
            tax_cents: -3,
            currency: "EUR".into(),
        });
        for d in [
            Decision::Approve,
            Decision::Reject("no".into()),
            Decision::Escalate {
                to: "ana".into(),
                level: 2,
            },
            Decision::Split(1, 2),
        ] {
            round_trip(d);
        }
        round_trip(Some(vec![Some(1u32), None]));
        round_trip::<Option<String>>(None);
        round_trip((1u8, "two".to_string(), Some(3i64)));
        round_trip(vec![(1u8, 2u16); 3]);
        round_trip(BTreeMap::from([
            ("a".to_string(), 1u32),
            ("b".to_string(), 2),
        ]));
        round_trip(BTreeMap::from([
            (1u32, "one".to_string()),
            (2, "two".to_string()),
        ]));
        round_trip(HashMap::from([(7i64, vec![1u8])]));
        round_trip::<Result<u32, String>>(Ok(4));
        round_trip::<Result<u32, String>>(Err("bad".into()));
        round_trip(Wrapper(9));
        round_trip(Marker);
        round_trip(Pair(-1, "x".into()));
    }

    #[test]
    fn nested() {
        let decoded = round_trip(Order {
            id: 7,
            lines: vec![("apple".into(), 3), ("pear".into(), 1)],
            price: Some(Price {
                cents: 5,
                tax_cents: 1,
                currency: "USD".into(),
            }),
            first: Decision::Reject("r".into()),
            decisions: vec![Decision::Approve, Decision::Split(3, 4)],
            tags: BTreeMap::from([("x".into(), vec![true, false])]),
            note: None,
            code: 'z',
            ratio: -2.5,
            small: 1.0,
            big: 1 << 100,
            neg: -(1 << 90),
            bytes: [1, 2, 3],
            nothing: (),
            marker: Marker,
            wrapped: Wrapper(3),
            pair: Pair(4, "four".into()),
        });
        assert_eq!(decoded["decisions"][1], json!({"Split": [3, 4]}));
        assert_eq!(decoded["price"]["currency"], json!("USD"));
    }

    #[test]
    fn a_self_recursive_type_decodes() {
        round_trip(Tree::Node(
            Box::new(Tree::Leaf(1)),
            Box::new(Tree::Node(Box::new(Tree::Leaf(2)), Box::new(Tree::Leaf(3)))),
        ));
        round_trip(vec![Tree::Leaf(4)]);
    }

    #[test]
    fn an_ambiguous_recursive_reference_is_refused() {
        #[derive(Serialize, Deserialize)]
        struct Holder {
            tree: Tree,
        }
        let err = JsonShape::parse(&shape_of::<Holder>()).unwrap_err();
        assert!(matches!(err, JsonError::Shape { .. }), "{err}");
        assert!(err.to_string().contains("rec Tree"), "{err}");
    }

    #[test]
    fn step_outcomes_decode_as_results() {
        let types = step_types::<Price, String>();
        let shape = JsonShape::of_step(&types).unwrap();
        let ok: Result<Price, String> = Ok(Price {
            cents: 1,
            tax_cents: 0,
            currency: "x".into(),
        });
        let bytes = codec::encode(&ok).unwrap();
        assert_eq!(
            shape.decode(&bytes).unwrap(),
            json!({"Ok": {"cents": 1, "tax_cents": 0, "currency": "x"}})
        );
        let err: Result<Price, String> = Err("nope".into());
        assert_eq!(
            shape.decode(&codec::encode(&err).unwrap()).unwrap(),
            json!({"Err": "nope"})
        );
    }

    #[test]
    fn encoding_checks_the_json_against_the_shape() {
        let shape = JsonShape::parse(&wait_types::<Price>().value).unwrap();
        let bytes = shape
            .encode(&json!({"cents": 1, "tax_cents": -2, "currency": "EUR"}))
            .unwrap();
        assert_eq!(
            codec::decode::<Price>(&bytes).unwrap(),
            Price {
                cents: 1,
                tax_cents: -2,
                currency: "EUR".into()
            }
        );
        let wrong = shape
            .encode(&json!({"cents": "1", "tax_cents": 0, "currency": "EUR"}))
            .unwrap_err();
        assert!(wrong.to_string().contains("at .cents"), "{wrong}");
        let missing = shape.encode(&json!({"cents": 1})).unwrap_err();
        assert!(missing.to_string().contains("tax_cents"), "{missing}");
        let extra = shape
            .encode(&json!({"cents": 1, "tax_cents": 0, "currency": "EUR", "x": 1}))
            .unwrap_err();
        assert!(extra.to_string().contains("unknown field `x`"), "{extra}");
        let negative = JsonShape::parse(&shape_of::<u8>())
            .unwrap()
            .encode(&json!(-1))
            .unwrap_err();
        assert!(negative.to_string().contains("expected u8"), "{negative}");
        let variant = JsonShape::parse(&shape_of::<Decision>())
            .unwrap()
            .encode(&json!("Maybe"))
            .unwrap_err();
        assert!(variant.to_string().contains("\"Approve\""), "{variant}");
    }

    #[test]
    fn missing_optional_fields_are_none() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Opt {
            a: u8,
            b: Option<u8>,
        }
        let shape = JsonShape::parse(&shape_of::<Opt>()).unwrap();
        let bytes = shape.encode(&json!({"a": 1})).unwrap();
        assert_eq!(codec::decode::<Opt>(&bytes).unwrap(), Opt { a: 1, b: None });
    }

    #[test]
    fn untraceable_and_damaged_values_are_typed_errors() {
        let untraceable = Shape {
            fingerprint: 0,
            text: "untraceable my::Type".into(),
            traced: false,
        };
        assert!(matches!(
            JsonShape::parse(&untraceable),
            Err(JsonError::Untraceable { .. })
        ));
        let shape = JsonShape::parse(&shape_of::<Price>()).unwrap();
        let bytes = codec::encode(&7u8).unwrap();
        assert!(matches!(
            shape.decode(&bytes),
            Err(JsonError::Decode { .. })
        ));
        assert!(matches!(shape.decode(&[]), Err(JsonError::Decode { .. })));
        let garbage = Shape {
            fingerprint: 0,
            text: "{a: nonsense}".into(),
            traced: true,
        };
        assert!(matches!(
            JsonShape::parse(&garbage),
            Err(JsonError::Shape { .. })
        ));
    }
}

//! WeChat's XML: the push envelopes, the decrypted messages and events, and passive replies.
//!
//! Every document is read once into a [`Document`]: its text and where each element lies in it,
//! each element keeping its WeChat name. As a field map ([`Document::to_fields`],
//! [`parse_fields`]) or as JSON, leaves are strings, elements with children objects, repeated
//! names arrays. The typed models in [`push`] are views over the document, so unknown fields,
//! InfoTypes and MsgTypes pass through untouched.
//!
//! DOCTYPE declarations and any entity other than XML's five predefined ones and character
//! references are refused: a push is never allowed to define entities (XXE, billion laughs).

pub mod document;
pub mod envelope;
pub mod push;
pub mod reply;

pub use document::Document;

use serde_json::{Map, Value};

/// Deepest element nesting accepted. WeChat's deepest documents nest three or four levels.
const MAX_DEPTH: usize = 16;

/// Why an XML document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is empty")]
    Empty,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("DOCTYPE declarations are refused")]
    DocType,
    #[error("entity reference &{0}; is refused")]
    Entity(String),
    #[error("XML nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("no root element")]
    NoRoot,
    #[error("content after the root element")]
    TrailingContent,
    #[error("required field {0} is missing or empty")]
    MissingField(&'static str),
    #[error("field {field} is invalid: {reason}")]
    BadField { field: &'static str, reason: String },
}

/// A document's fields by their WeChat names (the children of the root element).
pub type Fields = Map<String, Value>;

/// Parses one XML document and returns the fields of its root element as a map.
pub fn parse_fields(xml: &str) -> Result<Fields, XmlError> {
    Document::parse(xml).map(|d| d.to_fields())
}

/// Where the typed models read a document's fields: a parsed [`Document`] or a [`Fields`] map.
pub trait FieldSource {
    /// The text of the root's field `name` when it is a leaf that occurs once (a nested or
    /// repeated field is no leaf).
    fn leaf(&self, name: &str) -> Option<&str>;
    /// Whether the root has a field `name` at all.
    fn has(&self, name: &str) -> bool;
}

impl FieldSource for Fields {
    fn leaf(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}

pub(crate) fn insert_field(fields: &mut Fields, name: String, value: Value) {
    match fields.get_mut(&name) {
        None => {
            fields.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// The string value of a leaf field, if present.
pub fn field_str<'a, S: FieldSource + ?Sized>(fields: &'a S, name: &str) -> Option<&'a str> {
    fields.leaf(name)
}

/// A required, non-empty string field.
pub fn required_str<'a, S: FieldSource + ?Sized>(
    fields: &'a S,
    name: &'static str,
) -> Result<&'a str, XmlError> {
    match field_str(fields, name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(XmlError::MissingField(name)),
    }
}

/// A required integer field (`CreateTime` and friends).
pub fn required_i64<S: FieldSource + ?Sized>(
    fields: &S,
    name: &'static str,
) -> Result<i64, XmlError> {
    let raw = required_str(fields, name)?;
    raw.trim().parse().map_err(|_| XmlError::BadField {
        field: name,
        reason: "not an integer".into(),
    })
}

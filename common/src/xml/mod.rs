//! WeChat's XML: the push envelopes, the decrypted messages and events, and passive replies.
//!
//! Every document is first read into a generic field map ([`parse_fields`]) in which each
//! element keeps its WeChat name: leaves become JSON strings, elements with children become
//! objects, repeated names become arrays. The typed models in [`push`] are views over that map,
//! so unknown fields, InfoTypes and MsgTypes pass through untouched.
//!
//! DOCTYPE declarations and any entity other than XML's five predefined ones and character
//! references are refused: a push is never allowed to define entities (XXE, billion laughs).

pub mod envelope;
pub mod push;
pub mod reply;

use quick_xml::events::Event;
use quick_xml::reader::Reader;
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

/// Parses bytes that must be UTF-8 XML (see [`parse_fields`]).
pub fn parse_fields_bytes(body: &[u8]) -> Result<Fields, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    parse_fields(text)
}

/// Parses one XML document and returns the fields of its root element.
pub fn parse_fields(xml: &str) -> Result<Fields, XmlError> {
    if xml.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;

    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Fields> = None;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError::TrailingContent);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                if let Some(parent) = stack.last_mut() {
                    parent.has_children = true;
                }
                stack.push(Frame {
                    name: element_name(start.name().as_ref())?,
                    fields: Fields::new(),
                    text: String::new(),
                    has_children: false,
                });
            }
            Event::Empty(start) => {
                let name = element_name(start.name().as_ref())?;
                match stack.last_mut() {
                    Some(parent) => {
                        parent.has_children = true;
                        insert_field(&mut parent.fields, name, Value::String(String::new()));
                    }
                    None if root.is_none() => root = Some(Fields::new()),
                    None => return Err(XmlError::TrailingContent),
                }
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| {
                    XmlError::Malformed("closing tag without an opening one".into())
                })?;
                let value = if frame.has_children {
                    Value::Object(frame.fields)
                } else {
                    Value::String(frame.text)
                };
                match stack.last_mut() {
                    Some(parent) => insert_field(&mut parent.fields, frame.name, value),
                    None => {
                        root = Some(match value {
                            Value::Object(fields) => fields,
                            _ => Fields::new(),
                        })
                    }
                }
            }
            Event::Text(text) => {
                let decoded = text
                    .xml10_content()
                    .map_err(|e| XmlError::Malformed(e.to_string()))?;
                push_text(&mut stack, &root, &decoded)?;
            }
            Event::CData(data) => {
                let decoded = std::str::from_utf8(data.as_ref()).map_err(|_| XmlError::NotUtf8)?;
                push_text(&mut stack, &root, decoded)?;
            }
            Event::GeneralRef(reference) => {
                let resolved: String = match reference
                    .resolve_char_ref()
                    .map_err(|e| XmlError::Malformed(e.to_string()))?
                {
                    Some(ch) => ch.to_string(),
                    None => {
                        let name = reference
                            .decode()
                            .map_err(|e| XmlError::Malformed(e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| XmlError::Entity(name.chars().take(32).collect()))?
                            .to_owned()
                    }
                };
                push_text(&mut stack, &root, &resolved)?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed(
            "document ends inside an element".into(),
        ));
    }
    root.ok_or(XmlError::NoRoot)
}

/// One open element while parsing: its name, its child fields, and its text.
struct Frame {
    name: String,
    fields: Fields,
    text: String,
    has_children: bool,
}

fn element_name(raw: &[u8]) -> Result<String, XmlError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| XmlError::NotUtf8)
}

fn push_text(stack: &mut [Frame], root: &Option<Fields>, text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(frame) => {
            frame.text.push_str(text);
            Ok(())
        }
        // Whitespace around the root is fine; anything else outside it is not.
        None if text.trim().is_empty() => Ok(()),
        None if root.is_some() => Err(XmlError::TrailingContent),
        None => Err(XmlError::Malformed("text outside the root element".into())),
    }
}

fn insert_field(fields: &mut Fields, name: String, value: Value) {
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
pub fn field_str<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str)
}

/// A required, non-empty string field.
pub fn required_str<'a>(fields: &'a Fields, name: &'static str) -> Result<&'a str, XmlError> {
    match field_str(fields, name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(XmlError::MissingField(name)),
    }
}

/// A required integer field (`CreateTime` and friends).
pub fn required_i64(fields: &Fields, name: &'static str) -> Result<i64, XmlError> {
    let raw = required_str(fields, name)?;
    raw.trim().parse().map_err(|_| XmlError::BadField {
        field: name,
        reason: "not an integer".into(),
    })
}

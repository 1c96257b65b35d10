//! One XML document, read once: its text and, beside it, where each element's name and text
//! lie in that text. No map, no string per field: a field is found by its name among the root's
//! children, and the document writes itself as JSON (the same JSON as its [`Fields`] map) with
//! no copy in between. This is the decrypt worker's representation of a push (issue 11: the
//! map of owned fields cost more than decryption itself); [`Document::to_fields`] gives the map
//! to whoever wants `serde_json` values.
//!
//! DOCTYPE declarations and any entity other than XML's five predefined ones and character
//! references are refused: a push is never allowed to define entities (XXE, billion laughs).

use super::{FieldSource, Fields, MAX_DEPTH, XmlError};
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;

/// A parsed XML document (see the module's documentation).
#[derive(Debug, Clone)]
pub struct Document {
    source: String,
    /// Every element in document order; `nodes[0]` is the root.
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
struct Node {
    name: Piece,
    /// The element's text, all its pieces joined; unused once it has children.
    text: Piece,
    first_child: Option<usize>,
    last_child: Option<usize>,
    next_sibling: Option<usize>,
}

/// A string of the document: a range of its text where it is one, a copy where it is not (a
/// text with an entity reference or a line break to normalise, the join of several pieces).
#[derive(Debug, Clone)]
enum Piece {
    At(Range<usize>),
    Own(String),
}

impl Piece {
    const EMPTY: Piece = Piece::At(0..0);

    fn get<'s>(&'s self, source: &'s str) -> &'s str {
        match self {
            Piece::At(r) => source.get(r.clone()).unwrap_or_default(),
            Piece::Own(s) => s,
        }
    }
}

/// Where `part` lies in `source`, when it is a slice of it (the reader borrows every name,
/// text and CDATA section from the text it reads). Found by address: a range inside `source`'s
/// bounds at `part`'s address *is* `part`'s bytes, and `str::get` checks it starts and ends on
/// characters, so the piece is valid UTF-8 without another pass; a piece from elsewhere (no
/// range inside the bounds) is copied instead.
fn span(source: &str, part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(source.as_ptr() as usize)?;
    let range = start..start.checked_add(part.len())?;
    source.get(range.clone()).map(|_| range)
}

fn piece(source: &str, text: Cow<'_, str>) -> Piece {
    match span(source, text.as_bytes()) {
        Some(r) => Piece::At(r),
        None => Piece::Own(text.into_owned()),
    }
}

impl Document {
    /// Parses one XML document (the whole text must be this one document; whitespace, comments,
    /// processing instructions and an XML declaration around it are allowed).
    pub fn parse(xml: impl Into<String>) -> Result<Self, XmlError> {
        let source: String = xml.into();
        let nodes = read(&source)?;
        Ok(Self { source, nodes })
    }

    /// Parses bytes that must be UTF-8 XML.
    pub fn parse_bytes(body: &[u8]) -> Result<Self, XmlError> {
        Self::parse(std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?)
    }

    /// The length of the document's text (its JSON is about as long).
    pub fn text_len(&self) -> usize {
        self.source.len()
    }

    /// The document's fields as a map (leaves are strings, elements with children objects,
    /// repeated names arrays; the root's own text is dropped).
    pub fn to_fields(&self) -> Fields {
        self.fields_of(0)
    }

    fn children(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        let first = self.nodes.get(node).and_then(|n| n.first_child);
        std::iter::successors(first, |&i| self.nodes.get(i).and_then(|n| n.next_sibling))
    }

    fn name(&self, node: usize) -> &str {
        self.nodes[node].name.get(&self.source)
    }

    /// Whether element `node` is called `name` (lengths first: most names differ in length).
    fn is_named(&self, node: usize, name: &str) -> bool {
        match &self.nodes[node].name {
            Piece::At(r) if r.len() != name.len() => false,
            piece => piece.get(&self.source) == name,
        }
    }

    fn has_children(&self, node: usize) -> bool {
        self.nodes[node].first_child.is_some()
    }

    fn fields_of(&self, node: usize) -> Fields {
        let mut fields = Fields::new();
        for child in self.children(node) {
            let value = if self.has_children(child) {
                Value::Object(self.fields_of(child))
            } else {
                Value::String(self.nodes[child].text.get(&self.source).to_owned())
            };
            super::insert_field(&mut fields, self.name(child).to_owned(), value);
        }
        fields
    }
}

impl FieldSource for Document {
    fn leaf(&self, name: &str) -> Option<&str> {
        let mut found = None;
        for child in self.children(0).filter(|&c| self.is_named(c, name)) {
            if found.is_some() || self.has_children(child) {
                return None;
            }
            found = Some(self.nodes[child].text.get(&self.source));
        }
        found
    }

    fn has(&self, name: &str) -> bool {
        self.children(0).any(|c| self.is_named(c, name))
    }
}

/// Equal when their fields are (whatever their spelling: CDATA or not, whitespace, order of
/// distinct names).
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        self.to_fields() == other.to_fields()
    }
}

/// The root's fields as a JSON object: byte for byte what `serde_json` writes for
/// [`Document::to_fields`] (names sorted, repeated names as arrays in document order).
impl Serialize for Document {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Object { doc: self, node: 0 }.serialize(s)
    }
}

struct Object<'d> {
    doc: &'d Document,
    node: usize,
}

struct Element<'d> {
    doc: &'d Document,
    node: usize,
}

struct Repeated<'d, 'k> {
    doc: &'d Document,
    nodes: &'k [(&'d str, usize)],
}

impl Serialize for Object<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let doc = self.doc;
        // On the stack for a push's usual few fields (a heap vector per object cost an
        // allocation per push on the codec path).
        let mut kids: SmallVec<[(&str, usize); 16]> =
            doc.children(self.node).map(|c| (doc.name(c), c)).collect();
        // By name, then by place: a repeated name keeps its document order, as the map's
        // arrays do.
        kids.sort_unstable();
        let groups = kids.chunk_by(|a, b| a.0 == b.0);
        let mut map = s.serialize_map(Some(groups.clone().count()))?;
        for group in groups {
            map.serialize_key(group[0].0)?;
            match group {
                [(_, one)] => map.serialize_value(&Element { doc, node: *one })?,
                many => map.serialize_value(&Repeated { doc, nodes: many })?,
            }
        }
        map.end()
    }
}

impl Serialize for Element<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.doc.has_children(self.node) {
            Object {
                doc: self.doc,
                node: self.node,
            }
            .serialize(s)
        } else {
            s.serialize_str(self.doc.nodes[self.node].text.get(&self.doc.source))
        }
    }
}

impl Serialize for Repeated<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.nodes.len()))?;
        for &(_, node) in self.nodes {
            seq.serialize_element(&Element {
                doc: self.doc,
                node,
            })?;
        }
        seq.end()
    }
}

/// Reads `source` into its elements (see [`Document::parse`]).
fn read(source: &str) -> Result<Vec<Node>, XmlError> {
    if source.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(source);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;

    let mut nodes: Vec<Node> = Vec::with_capacity(16);
    // The open elements, innermost last (on the stack: at most MAX_DEPTH, refused beyond).
    let mut open: SmallVec<[usize; MAX_DEPTH]> = SmallVec::new();
    let mut closed = false;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::Start(start) => {
                if closed {
                    return Err(XmlError::TrailingContent);
                }
                if open.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let name = located(source, start.name().as_ref())?;
                let node = add(&mut nodes, open.last().copied(), name);
                open.push(node);
            }
            Event::Empty(start) => {
                let name = located(source, start.name().as_ref())?;
                match open.last() {
                    Some(&parent) => {
                        add(&mut nodes, Some(parent), name);
                    }
                    None if !closed => {
                        add(&mut nodes, None, name);
                        closed = true;
                    }
                    None => return Err(XmlError::TrailingContent),
                }
            }
            Event::End(_) => {
                open.pop().ok_or_else(|| {
                    XmlError::Malformed("closing tag without an opening one".into())
                })?;
                closed = open.is_empty();
            }
            Event::Text(text) => {
                // Text without a carriage return is taken as it lies; with one, XML 1.0's
                // line-end normalisation makes a copy.
                let text = match span(source, &text) {
                    Some(r) if !text.contains(&b'\r') => Piece::At(r),
                    _ => piece(
                        source,
                        text.xml10_content()
                            .map_err(|e| XmlError::Malformed(e.to_string()))?,
                    ),
                };
                push_text(source, &mut nodes, &open, closed, text)?;
            }
            Event::CData(data) => {
                let text = located(source, &data)?;
                push_text(source, &mut nodes, &open, closed, text)?;
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
                push_text(source, &mut nodes, &open, closed, Piece::Own(resolved))?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !open.is_empty() {
        return Err(XmlError::Malformed(
            "document ends inside an element".into(),
        ));
    }
    if !closed {
        return Err(XmlError::NoRoot);
    }
    Ok(nodes)
}

/// An element's name or a CDATA section, taken as it lies (or copied, if it is UTF-8).
fn located(source: &str, raw: &[u8]) -> Result<Piece, XmlError> {
    match span(source, raw) {
        Some(r) => Ok(Piece::At(r)),
        None => std::str::from_utf8(raw)
            .map(|s| Piece::Own(s.to_owned()))
            .map_err(|_| XmlError::NotUtf8),
    }
}

/// Adds an element under `parent` (or the root when there is none); its index.
fn add(nodes: &mut Vec<Node>, parent: Option<usize>, name: Piece) -> usize {
    let node = nodes.len();
    nodes.push(Node {
        name,
        text: Piece::EMPTY,
        first_child: None,
        last_child: None,
        next_sibling: None,
    });
    if let Some(p) = parent {
        match nodes[p].last_child.replace(node) {
            Some(previous) => nodes[previous].next_sibling = Some(node),
            None => {
                nodes[p].first_child = Some(node);
                // An element with children is an object: its text is never read.
                nodes[p].text = Piece::EMPTY;
            }
        }
    }
    node
}

fn push_text(
    source: &str,
    nodes: &mut [Node],
    open: &[usize],
    closed: bool,
    text: Piece,
) -> Result<(), XmlError> {
    let str = text.get(source);
    match open.last() {
        Some(&node) => {
            let node = &mut nodes[node];
            if node.first_child.is_some() || str.is_empty() {
                return Ok(());
            }
            node.text = match std::mem::replace(&mut node.text, Piece::EMPTY) {
                Piece::At(r) if r.is_empty() => text,
                // Appended in place: a text of thousands of entity references stays linear.
                Piece::Own(mut joined) => {
                    joined.push_str(str);
                    Piece::Own(joined)
                }
                earlier @ Piece::At(_) => {
                    let mut joined = earlier.get(source).to_owned();
                    joined.push_str(str);
                    Piece::Own(joined)
                }
            };
            Ok(())
        }
        // Whitespace around the root is fine; anything else outside it is not.
        None if str.trim().is_empty() => Ok(()),
        None if closed => Err(XmlError::TrailingContent),
        None => Err(XmlError::Malformed("text outside the root element".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(xml: &str) -> (String, String) {
        let d = Document::parse(xml).unwrap();
        (
            serde_json::to_string(&d).unwrap(),
            serde_json::to_string(&d.to_fields()).unwrap(),
        )
    }

    #[test]
    fn writes_the_same_json_as_its_map() {
        for xml in [
            "<xml><B>2</B><A>1</A><C><![CDATA[x \"y\" \\ \u{1}]]></C></xml>",
            "<xml><A>1</A><B><X>1</X><X>2</X><Y/></B><A>3</A><A><Z>z</Z></A></xml>",
            "<xml>text<A>a &amp; &#x4e2d;</A>more<E></E><F/></xml>",
            "<xml>\n  <ToUserName><![CDATA[gh_1]]></ToUserName>\n  <Content>a<![CDATA[b]]>c&lt;</Content>\n</xml>",
            "<xml>\r\n<A>line\r\nnext\rlast</A><B><![CDATA[kept\r\n]]></B></xml>",
            "<xml>only text</xml>",
            "<xml/>",
            "<?xml version=\"1.0\"?><!-- c --><xml><a>1</a></xml>\n",
        ] {
            let (direct, via_map) = json(xml);
            assert_eq!(direct, via_map, "{xml}");
        }
        let (direct, _) = json("<xml><B>2</B><A>1</A><A>0</A><C><D>d</D>ignored</C></xml>");
        assert_eq!(direct, r#"{"A":["1","0"],"B":"2","C":{"D":"d"}}"#);
    }

    #[test]
    fn leaves_are_single_childless_fields_of_the_root() {
        let d =
            Document::parse("<xml><A>1</A><R>1</R><R>2</R><N><X>x</X></N><E/><T>a&amp;b</T></xml>")
                .unwrap();
        assert_eq!(d.leaf("A"), Some("1"));
        assert_eq!(d.leaf("R"), None, "repeated");
        assert_eq!(d.leaf("N"), None, "nested");
        assert_eq!(d.leaf("X"), None, "not a field of the root");
        assert_eq!(d.leaf("E"), Some(""));
        assert_eq!(d.leaf("T"), Some("a&b"));
        assert!(d.has("R") && d.has("N") && !d.has("Z"));
        // XML 1.0 line ends in text (a copy); CDATA as written (borrowed).
        let d = Document::parse("<xml><A>a\r\nb\rc</A><B><![CDATA[x\r\n]]></B></xml>").unwrap();
        assert_eq!(d.leaf("A"), Some("a\nb\nc"));
        assert_eq!(d.leaf("B"), Some("x\r\n"));
        // Text in many pieces (one per entity reference) is joined in order.
        let d =
            Document::parse(format!("<xml><C>a{}b</C></xml>", "&amp;x".repeat(10_000))).unwrap();
        let c = d.leaf("C").unwrap();
        assert_eq!(c.len(), 2 + 2 * 10_000);
        assert!(c.starts_with("a&x&x") && c.ends_with("&xb"));
        let f = d.to_fields();
        for name in ["A", "R", "N", "E", "T", "Z"] {
            assert_eq!(d.leaf(name), f.leaf(name), "{name}");
        }
    }

    #[test]
    fn refuses_what_the_map_refused() {
        assert_eq!(Document::parse("  ").unwrap_err(), XmlError::Empty);
        assert_eq!(
            Document::parse("<!DOCTYPE x><xml/>").unwrap_err(),
            XmlError::DocType
        );
        assert_eq!(
            Document::parse("<xml>&foo;</xml>").unwrap_err(),
            XmlError::Entity("foo".into())
        );
        assert_eq!(
            Document::parse("<xml/><b/>").unwrap_err(),
            XmlError::TrailingContent
        );
        assert_eq!(
            Document::parse("<xml></xml>x").unwrap_err(),
            XmlError::TrailingContent
        );
        assert!(matches!(
            Document::parse("x<xml/>").unwrap_err(),
            XmlError::Malformed(_)
        ));
        assert!(matches!(
            Document::parse("<xml><a></xml>").unwrap_err(),
            XmlError::Malformed(_)
        ));
        assert_eq!(
            Document::parse("<!-- only -->").unwrap_err(),
            XmlError::NoRoot
        );
        assert_eq!(
            Document::parse_bytes(b"<xml>\xff</xml>").unwrap_err(),
            XmlError::NotUtf8
        );
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(16), "</a>".repeat(16));
        assert_eq!(Document::parse(deep).unwrap_err(), XmlError::TooDeep);
    }
}

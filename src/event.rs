//! Events as they travel: positions (ids), validated names, compact JSON data,
//! and the envelope that carries an event between replicas.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde_json::value::RawValue;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest event type accepted.
pub const MAX_EVENT_TYPE_LEN: usize = 64;
/// Event types with this prefix are sseplane's own (`sseplane.gap`).
pub const RESERVED_EVENT_PREFIX: &str = "sseplane.";
/// The event type of the notice sent when history no longer covers a resume position.
pub const GAP_EVENT: &str = "sseplane.gap";
/// The event type of the notice sent before a stream ends because its token expired.
pub const TOKEN_EXPIRED_EVENT: &str = "sseplane.token_expired";

/// A position in one channel's history: the same `<ms>-<seq>` shape as a Redis
/// stream id, so ids mean the same on every replica and on both backplanes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Milliseconds since the Unix epoch on the clock that issued the id.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl Position {
    /// The position before any event of a channel.
    pub const ZERO: Position = Position { ms: 0, seq: 0 };

    /// The position that follows `self` on the same clock millisecond.
    pub fn next_after(self, now_ms: u64) -> Position {
        if now_ms > self.ms {
            Position { ms: now_ms, seq: 0 }
        } else {
            Position {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a position could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a position of the form <ms>-<seq>")]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadPosition)?;
        Ok(Position {
            ms: parse_decimal(ms)?,
            seq: parse_decimal(seq)?,
        })
    }
}

/// Strict decimal: digits only, no sign, no leading `+`, at most 20 digits.
fn parse_decimal(s: &str) -> Result<u64, BadPosition> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadPosition);
    }
    s.parse().map_err(|_| BadPosition)
}

/// Checks a channel name: 1–200 characters of `A-Z a-z 0-9 _ - . : @ /`.
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "channel names are 1 to {MAX_CHANNEL_LEN} characters long"
        ));
    }
    match name.bytes().find(|b| !is_channel_byte(*b)) {
        None => Ok(()),
        Some(_) => Err(format!(
            "channel {name:?} has a character outside A-Z a-z 0-9 _ - . : @ /"
        )),
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/')
}

/// Checks a publisher's event type: 1–64 characters of `A-Z a-z 0-9 _ - . :`,
/// not in the reserved `sseplane.` namespace.
pub fn validate_event_type(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_EVENT_TYPE_LEN {
        return Err(format!(
            "event types are 1 to {MAX_EVENT_TYPE_LEN} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(format!(
            "event type {name:?} has a character outside A-Z a-z 0-9 _ - . :"
        ));
    }
    if name.starts_with(RESERVED_EVENT_PREFIX) {
        return Err(format!(
            "event types starting with {RESERVED_EVENT_PREFIX:?} are reserved"
        ));
    }
    Ok(())
}

/// Returns the compact text of a JSON value: the same value, with the whitespace
/// between tokens removed. Numbers, strings and key order stay byte-for-byte as
/// published, and valid JSON never holds a raw line break inside a string, so the
/// result is always one line.
pub fn compact_json(raw: &RawValue) -> String {
    compact_json_depth(raw).0
}

/// Deepest nesting of arrays and objects accepted in published data, whatever
/// the channel's policy: `[[1]]` nests 2 levels, a scalar 0.
pub const MAX_DATA_DEPTH: usize = 128;

/// Like [`compact_json`], with the value's nesting depth (see [`json_depth`])
/// counted in the same pass.
pub fn compact_json_depth(raw: &RawValue) -> (String, usize) {
    let scan = scan_data(raw);
    (scan.data, scan.depth)
}

/// A `\uXXXX` escape of a UTF-16 surrogate that is not half of a pair: valid
/// JSON syntax (RFC 8259 allows it), but no Unicode character, so that many
/// JSON parsers refuse it (serde_json among them) while others (a browser's
/// `JSON.parse`) accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoneSurrogate {
    /// The escape as written, e.g. `\uD800`.
    pub escape: String,
    /// Where its backslash is, in bytes from the start of the value as sent.
    pub offset: usize,
}

impl fmt::Display for LoneSurrogate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data holds a lone surrogate escape {} (at byte {} of data): \\ud800-\\udbff \
             must be followed directly by \\udc00-\\udfff, forming a UTF-16 pair; a lone one \
             encodes no Unicode character and many JSON parsers refuse it",
            self.escape, self.offset
        )
    }
}

/// What one pass over published data finds: its compact text (see
/// [`compact_json`]), how deeply it nests (see [`json_depth`]) and its first
/// lone surrogate escape, in strings and object keys alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataScan {
    /// The compact JSON text.
    pub data: String,
    /// The deepest nesting of arrays and objects.
    pub depth: usize,
    /// The first lone surrogate escape, if any.
    pub lone_surrogate: Option<LoneSurrogate>,
}

/// Compacts `raw`, measures its depth and looks for lone surrogate escapes, in
/// one pass over the text.
pub fn scan_data(raw: &RawValue) -> DataScan {
    let text = raw.get();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut lone_surrogate = None;
    // Where the `u` of the low half of the last high surrogate escape is.
    let mut paired_low = None;
    for (i, c) in text.char_indices() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
                if c == 'u' && lone_surrogate.is_none() {
                    lone_surrogate = unpaired_surrogate(text, i, &mut paired_low);
                }
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ' ' | '\t' | '\n' | '\r' => continue,
            _ => {}
        }
        out.push(c);
    }
    DataScan {
        data: out,
        depth: deepest,
        lone_surrogate,
    }
}

/// The four hex digits at `at` in `text`, as a UTF-16 code unit.
fn hex_unit(text: &str, at: usize) -> Option<u16> {
    let hex = text.get(at..at + 4)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Checks the `\u` escape whose `u` is at `u_at` in `text`: a high surrogate
/// must be followed directly by a low one (whose `u` position is then kept in
/// `paired_low`), and a low surrogate must be that one.
fn unpaired_surrogate(
    text: &str,
    u_at: usize,
    paired_low: &mut Option<usize>,
) -> Option<LoneSurrogate> {
    let unit = hex_unit(text, u_at + 1)?;
    let paired = match unit {
        0xD800..=0xDBFF => {
            let low = text.get(u_at + 5..u_at + 7) == Some("\\u")
                && hex_unit(text, u_at + 7).is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
            if low {
                *paired_low = Some(u_at + 6);
            }
            low
        }
        0xDC00..=0xDFFF => *paired_low == Some(u_at),
        _ => true,
    };
    (!paired).then(|| LoneSurrogate {
        escape: text[u_at - 1..u_at + 5].to_owned(),
        offset: u_at - 1,
    })
}

/// How deeply arrays and objects nest in the JSON `text` (a scalar: 0), by a
/// byte scan that skips strings (brackets inside them do not count).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut strings = Strings::default();
    for b in text.bytes() {
        if strings.skips(b) {
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Follows a byte scan of JSON text through its strings.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Takes the next byte; true when it belongs to a string (quotes included).
    fn skips(&mut self, b: u8) -> bool {
        if self.inside {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.inside = false;
            }
            true
        } else {
            self.inside = b == b'"';
            self.inside
        }
    }
}

/// Why published data could not become a [`serde_json::Value`] (which a JSON
/// Schema validates).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataValueError {
    /// A number beyond the 64-bit floating point range (`1e400`, a 400-digit
    /// integer): valid JSON that the validator cannot hold.
    #[error("number {0} is out of the 64-bit floating point range")]
    UnsupportedNumber(String),
    /// Anything else the parser refused.
    #[error("{0}")]
    Malformed(String),
}

/// serde_json refuses to nest this many levels (it takes 127).
const SERDE_JSON_DEPTH: usize = 128;

/// Parses compact JSON `data` (already known to be valid JSON) into a value,
/// however deep it nests: serde_json stops at 127 levels, so deeper arrays and
/// objects are taken apart level by level until the rest fits.
pub fn data_value(data: &str) -> Result<serde_json::Value, DataValueError> {
    value_of(data).map_err(|e| match unrepresentable_number(data) {
        Some(number) => DataValueError::UnsupportedNumber(number.to_owned()),
        None => DataValueError::Malformed(e.to_string()),
    })
}

fn value_of(text: &str) -> serde_json::Result<serde_json::Value> {
    use serde_json::Value;
    if json_depth(text) < SERDE_JSON_DEPTH {
        return serde_json::from_str(text);
    }
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)?;
        let items = items.into_iter().map(|item| value_of(item.get()));
        items.collect::<Result<_, _>>().map(Value::Array)
    } else {
        let Members(members) = serde_json::from_str(text)?;
        let mut object = serde_json::Map::new();
        for (key, value) in members {
            object.insert(key, value_of(value.get())?);
        }
        Ok(Value::Object(object))
    }
}

/// An object's members in order, their values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The first number in the JSON `text` that a 64-bit float cannot hold.
fn unrepresentable_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut strings = Strings::default();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if strings.skips(b) {
            // A string byte: nothing to look at.
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let number = &text[start..i];
            if number.parse::<f64>().is_ok_and(|n| !n.is_finite()) {
                return Some(number);
            }
            continue;
        }
        i += 1;
    }
    None
}

/// What a publisher sent for one event, validated: the type (if any), the compact
/// JSON data, the publish time and the caller's trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBody {
    /// The SSE `event:` type; `None` makes browsers fire `onmessage`.
    pub event_type: Option<String>,
    /// Compact JSON text of the data, one line.
    pub data: String,
    /// Publish time in Unix milliseconds (for lag measurement).
    pub published_ms: u64,
    /// W3C `traceparent` of the publish, empty when none.
    pub trace_parent: String,
}

/// Envelope format version written first in every envelope.
const ENVELOPE_VERSION: &str = "v1";

/// Why an envelope from the backplane could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed backplane envelope: {0}")]
pub struct BadEnvelope(pub &'static str);

impl EventBody {
    /// Encodes the body for the backplane: `v1\n<type>\n<traceparent>\n<ms>\n<data>`.
    /// Every field but the data is validated to hold no line break, and compact
    /// JSON holds none either, so the fields can be split back unambiguously.
    pub fn encode(&self) -> String {
        let event_type = self.event_type.as_deref().unwrap_or("");
        let mut out = String::with_capacity(
            self.data.len() + event_type.len() + self.trace_parent.len() + 32,
        );
        out.push_str(ENVELOPE_VERSION);
        out.push('\n');
        out.push_str(event_type);
        out.push('\n');
        out.push_str(&self.trace_parent);
        out.push('\n');
        out.push_str(&self.published_ms.to_string());
        out.push('\n');
        out.push_str(&self.data);
        out
    }

    /// Decodes what [`EventBody::encode`] wrote.
    pub fn decode(text: &str) -> Result<EventBody, BadEnvelope> {
        let mut parts = text.splitn(5, '\n');
        if parts.next() != Some(ENVELOPE_VERSION) {
            return Err(BadEnvelope("unknown version"));
        }
        let event_type = parts.next().ok_or(BadEnvelope("no event type"))?;
        let trace_parent = parts.next().ok_or(BadEnvelope("no trace context"))?;
        let published_ms = parts
            .next()
            // Canonical decimal only (no `+`, no leading zeros): what decodes
            // encodes back to the same text.
            .and_then(|ms| ms.parse::<u64>().ok().filter(|n| n.to_string() == ms))
            .ok_or(BadEnvelope("no publish time"))?;
        let data = parts.next().ok_or(BadEnvelope("no data"))?;
        if data.contains(['\n', '\r']) || data.is_empty() {
            return Err(BadEnvelope("data is not one line"));
        }
        if !event_type.is_empty() && validate_event_type_or_reserved(event_type).is_err() {
            return Err(BadEnvelope("bad event type"));
        }
        Ok(EventBody {
            event_type: (!event_type.is_empty()).then(|| event_type.to_owned()),
            data: data.to_owned(),
            published_ms,
            trace_parent: trace_parent.to_owned(),
        })
    }
}

/// Like [`validate_event_type`] but admits sseplane's own reserved types.
fn validate_event_type_or_reserved(name: &str) -> Result<(), String> {
    match name.strip_prefix(RESERVED_EVENT_PREFIX) {
        Some(rest) if !rest.is_empty() => validate_event_type(rest),
        _ => validate_event_type(name),
    }
}

/// An event on its way to local subscribers: its channel position and the SSE
/// bytes framed once for every subscriber of this replica.
#[derive(Debug)]
pub struct Frame {
    /// Position on its channel; `None` for broadcasts and notices (no `id:` line).
    pub position: Option<Position>,
    /// The whole SSE event: `id:` line (when positioned), `event:`, `data:`, blank line.
    pub bytes: Bytes,
    /// Where the bytes after the `id:` line start (streams of several channels
    /// write their own `id:` line, then these bytes).
    pub body_start: usize,
    /// Publish time in Unix milliseconds.
    pub published_ms: u64,
}

impl Frame {
    /// Frames an event once: `id: <pos>\nevent: <type>\ndata: <json>\n\n`.
    pub fn new(position: Option<Position>, body: &EventBody) -> Frame {
        let id_line = position.map(|p| format!("id: {p}\n")).unwrap_or_default();
        let mut buf = String::with_capacity(id_line.len() + body.data.len() + 96);
        buf.push_str(&id_line);
        if let Some(event_type) = &body.event_type {
            buf.push_str("event: ");
            buf.push_str(event_type);
            buf.push('\n');
        }
        buf.push_str("data: ");
        buf.push_str(&body.data);
        buf.push_str("\n\n");
        Frame {
            position,
            bytes: Bytes::from(buf),
            body_start: id_line.len(),
            published_ms: body.published_ms,
        }
    }

    /// The bytes without the `id:` line.
    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.body_start..)
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly_and_order_numerically() {
        let p: Position = "1700000000000-12".parse().unwrap();
        assert_eq!(
            p,
            Position {
                ms: 1_700_000_000_000,
                seq: 12
            }
        );
        assert_eq!(p.to_string(), "1700000000000-12");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1_2",
            "+1-2",
            "1-2-3",
            "a-1",
            "1 -2",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
        assert!("9-0".parse::<Position>().unwrap() < "10-0".parse().unwrap());
        assert!("10-2".parse::<Position>().unwrap() < "10-10".parse().unwrap());
    }

    #[test]
    fn channel_and_event_type_rules() {
        assert!(validate_channel("game:1:PlayerJoined").is_ok());
        assert!(validate_channel("user@example.com/inbox_1-a.b").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel(&"a".repeat(201)).is_err());
        assert!(validate_channel(&"a".repeat(200)).is_ok());
        assert!(validate_channel("a b").is_err());
        assert!(validate_channel("a\nb").is_err());
        assert!(validate_channel("a*").is_err());
        assert!(validate_event_type("PlayerJoined").is_ok());
        assert!(validate_event_type("sseplane.gap").is_err());
        assert!(validate_event_type("a\nid: 1").is_err());
        assert!(validate_event_type("a/b").is_err());
        assert!(validate_event_type(&"e".repeat(65)).is_err());
    }

    #[test]
    fn compact_json_keeps_strings_and_numbers() {
        let raw: Box<RawValue> = serde_json::from_str(
            "{ \"a\" : [ 1 , 2.50 ,\n 12345678901234567890123 ],\r\n \"s\": \" x \\\" y \" }",
        )
        .unwrap();
        assert_eq!(
            compact_json(&raw),
            r#"{"a":[1,2.50,12345678901234567890123],"s":" x \" y "}"#
        );
    }

    fn nested(depth: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects_not_brackets_in_strings() {
        for (text, depth) in [
            ("1", 0),
            ("\"[[{{\"", 0),
            ("[]", 1),
            ("{\"a\":[1,{\"b\":null}]}", 3),
            ("[\"\\\"[\",[]]", 2),
            ("[[],[[]],[]]", 3),
        ] {
            assert_eq!(json_depth(text), depth, "{text}");
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            assert_eq!(compact_json_depth(&raw).1, depth, "{text}");
        }
        let raw: Box<RawValue> = serde_json::from_str(&nested(129, "1")).unwrap();
        assert_eq!(compact_json_depth(&raw), (nested(129, "1"), 129));
    }

    #[test]
    fn data_values_nest_as_deep_as_the_limit() {
        for depth in [1, 127, MAX_DATA_DEPTH] {
            let text = nested(depth - 1, "{\"k\":[0,\"]\"],\"k\":{\"z\":1,\"a\":2}}");
            let mut expected = serde_json::json!({"k": {"z": 1, "a": 2}});
            for _ in 1..depth {
                expected = serde_json::Value::Array(vec![expected]);
            }
            assert_eq!(data_value(&text), Ok(expected), "depth {depth}");
        }
        let wide = format!("[1,{},{{\"a\":{}}}]", nested(127, "2"), nested(126, "3"));
        let value = data_value(&wide).unwrap();
        assert_eq!(value[0], 1);
        assert_eq!(json_depth(&value.to_string()), 128);
    }

    #[test]
    fn numbers_beyond_f64_are_named() {
        let digits = "9".repeat(400);
        for (text, number) in [
            ("1e400", "1e400"),
            ("{\"a\":[-1E+400]}", "-1E+400"),
            (&*format!("[1,{digits}]"), &*digits),
        ] {
            assert_eq!(
                data_value(text),
                Err(DataValueError::UnsupportedNumber(number.to_owned())),
                "{text}"
            );
        }
        assert!(data_value("[\"1e400\",1e-400,1e308]").is_ok());
        assert_eq!(unrepresentable_number("{\"1e400\":\"x\\\"1e400\"}"), None);
    }

    fn lone_surrogate(text: &str) -> Option<LoneSurrogate> {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        let scan = scan_data(&raw);
        assert_eq!(compact_json_depth(&raw), (scan.data, scan.depth), "{text}");
        scan.lone_surrogate
    }

    #[test]
    fn lone_surrogate_escapes_are_found_in_strings_and_keys() {
        for (text, escape, offset) in [
            (r#""\ud800""#, r"\ud800", 1),
            (r#""\uDBFF""#, r"\uDBFF", 1),
            (r#""\udc00""#, r"\udc00", 1),
            (r#"["ok", "x\ud83d"]"#, r"\ud83d", 9),
            (r#""\ud83d\u0041""#, r"\ud83d", 1),
            (r#""\ud83d\ud83d\ude00""#, r"\ud83d", 1),
            (r#""\ude00\ud83d""#, r"\ude00", 1),
            (r#""\ud83d\ude00\ude00""#, r"\ude00", 13),
            (r#"{"\ud800": 1}"#, r"\ud800", 2),
            (r#""\\\ud800""#, r"\ud800", 3),
            (r#""\ud83d"  "#, r"\ud83d", 1),
        ] {
            assert_eq!(
                lone_surrogate(text),
                Some(LoneSurrogate {
                    escape: escape.to_owned(),
                    offset
                }),
                "{text}"
            );
        }
        for text in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00 \udbff\udfff""#,
            r#"{"\ud83d\ude00": ["\u00e9\uffff\u0000"]}"#,
            r#""\\ud800""#,
            r#""\\\\ud800""#,
            r#""\ud83d\ude00\ud83d\ude00""#,
            "\"\u{1F600} raw\"",
        ] {
            assert_eq!(lone_surrogate(text), None, "{text}");
        }
    }

    #[test]
    fn envelope_round_trips() {
        let body = EventBody {
            event_type: Some("T".into()),
            data: r#"{"x":"a\nb"}"#.into(),
            published_ms: 42,
            trace_parent: String::new(),
        };
        assert_eq!(EventBody::decode(&body.encode()).unwrap(), body);
        assert!(EventBody::decode("v2\n\n\n1\n1").is_err());
        assert!(EventBody::decode("v1\n\n\n1\n1\n2").is_err());
    }

    #[test]
    fn frames_share_the_body() {
        let body = EventBody {
            event_type: Some("T".into()),
            data: "1".into(),
            published_ms: 0,
            trace_parent: String::new(),
        };
        let frame = Frame::new(Some(Position { ms: 5, seq: 1 }), &body);
        assert_eq!(&frame.bytes[..], b"id: 5-1\nevent: T\ndata: 1\n\n");
        assert_eq!(&frame.body()[..], b"event: T\ndata: 1\n\n");
        let untyped = EventBody {
            event_type: None,
            ..body
        };
        assert_eq!(&Frame::new(None, &untyped).bytes[..], b"data: 1\n\n");
    }
}

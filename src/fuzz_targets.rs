//! Fuzz targets for the parsers that take outside input, shared by the
//! cargo-fuzz crate in `fuzz/` and the stable replay in
//! `tests/fuzz_regressions.rs`.
//!
//! Each target takes arbitrary bytes, derives its inputs from them and panics
//! when an invariant breaks, not only when the code under test crashes.

use std::sync::OnceLock;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::client::{SseEvent, SseParser};
use crate::event::{
    compact_json, validate_channel, validate_event_type, EventBody, Frame, Position,
    MAX_CHANNEL_LEN, MAX_EVENT_TYPE_LEN, RESERVED_EVENT_PREFIX,
};
use crate::policy::compile::CompiledPattern;
use crate::sse::StreamIds;

/// A fuzz target: panics when an invariant breaks on the given input.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz binary and corpus directories use.
pub const TARGETS: &[(&str, Target)] = &[
    ("sse_framing", sse_framing),
    ("last_event_id", last_event_id),
    ("channel_names_and_globs", channel_names_and_globs),
    ("envelope", envelope),
    ("sse_parser", sse_parser),
];

/// A well-formed W3C `traceparent`, the only shape publish keeps.
const TRACE_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Publishing: `data[0]` is flags (bit 0: typed, bit 1: traced, bit 2:
/// positioned), then `<event type>\0<JSON>\0<position bytes>`. When the type is
/// valid and the JSON parses, the compact data survives the envelope and the
/// frame reads back, through [`SseParser`], as exactly the published event.
pub fn sse_framing(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (type_bytes, rest) = split_at_nul(rest);
    let (json_bytes, position_bytes) = split_at_nul(rest);
    let event_type = (flags & 1 != 0).then(|| String::from_utf8_lossy(type_bytes).into_owned());
    if let Some(event_type) = &event_type {
        let valid = validate_event_type(event_type).is_ok();
        assert_eq!(
            valid,
            is_valid_event_type(event_type),
            "validate_event_type disagrees with its rules on {event_type:?}"
        );
        if !valid {
            return;
        }
    }
    let Ok(text) = std::str::from_utf8(json_bytes) else {
        return;
    };
    let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text) else {
        return;
    };
    let compact = compact_json(&raw);
    assert!(
        !compact.is_empty() && !compact.contains(['\n', '\r']),
        "compact JSON of {text:?} is not one line: {compact:?}"
    );
    assert_eq!(
        compact_json(
            &serde_json::from_str::<Box<RawValue>>(&compact).expect("compact JSON parses")
        ),
        compact,
        "compact_json is not idempotent"
    );
    assert_eq!(
        serde_json::from_str::<Value>(text).ok(),
        serde_json::from_str::<Value>(&compact).ok(),
        "compact JSON {compact:?} is not the value of {text:?}"
    );
    let (ms, seq) = two_u64(position_bytes);
    let body = EventBody {
        event_type,
        data: compact,
        published_ms: ms,
        trace_parent: if flags & 2 != 0 { TRACE_PARENT } else { "" }.to_owned(),
    };
    let envelope = body.encode();
    assert_eq!(
        EventBody::decode(&envelope).as_ref(),
        Ok(&body),
        "envelope {envelope:?} does not decode to what was encoded"
    );
    let position = (flags & 4 != 0).then_some(Position { ms, seq });
    check_frame(&Frame::new(position, &body), &body);
}

/// `Last-Event-ID`: `data[0] % 4 + 1` channels, then the token. Decoding never
/// panics, whatever decodes re-encodes to the same positions, and the id of any
/// positions decodes back to them.
pub fn last_event_id(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(first % 4) + 1;
    let channels = &["a", "b:1", "c/d", "e@f"][..count];
    let ids = StreamIds::new(channels);
    assert_eq!(ids.is_multi(), count > 1);
    let token = String::from_utf8_lossy(rest);
    if let Ok(positions) = ids.decode(&token, count) {
        assert_eq!(positions.len(), count, "{token:?} decoded to a wrong count");
        let again = ids.encode(&positions);
        assert_eq!(
            ids.decode(&again, count).as_ref(),
            Ok(&positions),
            "{token:?} decoded, but its re-encoding {again:?} does not decode the same"
        );
    }
    // The token bytes also serve as positions, 16 bytes each.
    let mut positions: Vec<Position> = rest
        .chunks(16)
        .map(two_u64)
        .map(|(ms, seq)| Position { ms, seq })
        .collect();
    positions.resize(count, Position::ZERO);
    positions.truncate(count);
    let token = ids.encode(&positions);
    assert!(
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_'),
        "id {token:?} would not sit on one id: line"
    );
    assert_eq!(
        ids.decode(&token, count).as_ref(),
        Ok(&positions),
        "id {token:?} does not decode to its positions"
    );
    if count == 1 {
        assert_eq!(token, positions[0].to_string());
    }
}

/// Channel names and policy globs: `<name>\0<pattern>`. `validate_channel`
/// accepts exactly its documented set; patterns compile or fail without
/// panicking; a valid name used as a pattern matches that name and no other.
pub fn channel_names_and_globs(data: &[u8]) {
    let (name_bytes, pattern_bytes) = split_at_nul(data);
    let name = String::from_utf8_lossy(name_bytes);
    let pattern = String::from_utf8_lossy(pattern_bytes);
    let valid = validate_channel(&name).is_ok();
    assert_eq!(
        valid,
        is_valid_channel(&name),
        "validate_channel disagrees with its rules on {name:?}"
    );
    if let Ok(compiled) = CompiledPattern::new(&pattern) {
        assert_eq!(compiled.text, pattern);
        let _ = compiled.is_match(&name);
    }
    if !valid {
        return;
    }
    let literal = CompiledPattern::new(&name).expect("a valid channel name is a valid pattern");
    assert!(literal.is_match(&name), "{name:?} does not match itself");
    if pattern != name && validate_channel(&pattern).is_ok() {
        assert!(
            !literal.is_match(&pattern),
            "literal pattern {name:?} matches another channel {pattern:?}"
        );
    }
    static ANY: OnceLock<CompiledPattern> = OnceLock::new();
    let any = ANY.get_or_init(|| CompiledPattern::new("*").expect("* compiles"));
    assert!(any.is_match(&name), "* does not match {name:?}");
    if name.len() < MAX_CHANNEL_LEN {
        let prefix = CompiledPattern::new(&format!("{name}*")).expect("<name>* compiles");
        assert!(prefix.is_match(&name), "{name:?}* does not match {name:?}");
        let suffix: String = pattern
            .chars()
            .filter(|c| c.is_ascii() && is_valid_channel(&c.to_string()))
            .collect();
        let longer = format!("{name}{suffix}");
        assert!(
            prefix.is_match(&longer),
            "{name:?}* does not match {longer:?}"
        );
    }
}

/// The Redis envelope: arbitrary text. Whatever decodes re-encodes to the same
/// text and frames into a well-formed SSE event.
pub fn envelope(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(body) = EventBody::decode(&text) else {
        return;
    };
    let again = body.encode();
    assert_eq!(
        EventBody::decode(&again).as_ref(),
        Ok(&body),
        "re-encoded envelope {again:?} decodes differently"
    );
    assert_eq!(
        again, text,
        "envelope decoded but re-encodes to other text (non-canonical field accepted)"
    );
    check_frame(&Frame::new(None, &body), &body);
    let position = Position {
        ms: body.published_ms,
        seq: data.len() as u64,
    };
    check_frame(&Frame::new(Some(position), &body), &body);
}

/// The SSE client parser: arbitrary bytes, `data[0]` choosing a split point.
/// Feeding the bytes at once, in two chunks, or byte by byte gives the same
/// events and state, and every event field is free of line breaks.
pub fn sse_parser(data: &[u8]) {
    let whole = parse_chunks(std::iter::once(data));
    let split = match data.first() {
        Some(&b) => usize::from(b) % (data.len() + 1),
        None => 0,
    };
    let (head, tail) = data.split_at(split);
    assert_eq!(
        parse_chunks([head, tail].into_iter()),
        whole,
        "feeding {data:?} split at {split} changes what is parsed"
    );
    assert_eq!(
        parse_chunks(data.chunks(1)),
        whole,
        "feeding {data:?} byte by byte changes what is parsed"
    );
    for event in &whole.0 {
        assert!(!event.event.is_empty(), "empty event type in {event:?}");
        assert!(
            !event.event.contains(['\n', '\r']) && !event.data.contains('\r'),
            "line break inside a field of {event:?}"
        );
        if let Some(id) = &event.id {
            assert!(!id.contains(['\n', '\r', '\0']), "bad id in {event:?}");
        }
    }
}

/// What a parser made of a stream: the events, then `retry`, comments and id.
type Parsed = (Vec<SseEvent>, Option<u64>, u64, Option<String>);

/// Parses `chunks` with one parser.
fn parse_chunks<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Parsed {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.feed(chunk));
    }
    let id = parser.last_event_id().map(str::to_owned);
    (events, parser.retry_ms, parser.comments, id)
}

/// Checks a frame of `body`: only `id: `, `event: ` and `data: ` lines, in that
/// order, one blank line at the end, and [`SseParser`] reads back exactly the
/// event, with and without the `id:` line (as streams of several channels
/// write their own id).
fn check_frame(frame: &Frame, body: &EventBody) {
    let text = std::str::from_utf8(&frame.bytes).expect("frames are UTF-8");
    let id = frame.position.map(|p| p.to_string());
    let mut expected = String::new();
    if let Some(id) = &id {
        expected.push_str(&format!("id: {id}\n"));
    }
    assert_eq!(frame.body_start, expected.len(), "body_start is off");
    if let Some(event_type) = &body.event_type {
        expected.push_str(&format!("event: {event_type}\n"));
    }
    expected.push_str(&format!("data: {}\n\n", body.data));
    assert_eq!(text, expected, "frame is not the intended fields");
    assert!(!text.contains('\r'), "frame {text:?} holds a CR");
    let lines: Vec<&str> = text.split('\n').collect();
    let (blank, fields) = lines.split_last().expect("a frame has lines");
    assert!(blank.is_empty());
    let (blank, fields) = fields.split_last().expect("a frame has fields");
    assert!(
        blank.is_empty(),
        "frame {text:?} does not end with one blank line"
    );
    for line in fields {
        assert!(
            ["id: ", "event: ", "data: "]
                .iter()
                .any(|field| line.starts_with(field)),
            "frame {text:?} has the line {line:?}"
        );
    }
    let event_type = body.event_type.as_deref().unwrap_or("message");
    let read = |bytes: &[u8]| SseParser::new().feed(bytes);
    assert_eq!(
        read(&frame.bytes),
        vec![SseEvent {
            event: event_type.to_owned(),
            data: body.data.clone(),
            id: id.clone(),
        }],
        "frame {text:?} does not read back as its event"
    );
    assert_eq!(
        read(&frame.body()),
        vec![SseEvent {
            event: event_type.to_owned(),
            data: body.data.clone(),
            id: None,
        }],
        "frame body does not read back as its event"
    );
}

/// The documented event type rules, restated independently of the validator.
fn is_valid_event_type(name: &str) -> bool {
    (1..=MAX_EVENT_TYPE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        && !name.starts_with(RESERVED_EVENT_PREFIX)
}

/// The documented channel name rules, restated independently of the validator.
fn is_valid_channel(name: &str) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

/// Splits at the first NUL (dropping it); all of `data` when there is none.
fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Two little-endian `u64`s from up to 16 bytes (missing bytes are zero).
fn two_u64(bytes: &[u8]) -> (u64, u64) {
    let mut buf = [0u8; 16];
    let n = bytes.len().min(16);
    buf[..n].copy_from_slice(&bytes[..n]);
    let (a, b) = buf.split_at(8);
    (
        u64::from_le_bytes(a.try_into().expect("8 bytes")),
        u64::from_le_bytes(b.try_into().expect("8 bytes")),
    )
}

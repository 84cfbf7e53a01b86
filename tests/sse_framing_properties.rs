//! Properties of the publish path: whatever a publisher sends as data, event
//! type or id, the SSE bytes hold only the intended `id:`/`event:`/`data:`
//! lines and a client reads back exactly the published event.

use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;
use sseplane::client::{SseEvent, SseParser};
use sseplane::event::{
    compact_json, validate_event_type, EventBody, Frame, Position, MAX_EVENT_TYPE_LEN,
};
use sseplane::sse::{gap_frame, retry_line, StreamIds, KEEPALIVE};

/// Characters that could end or split an SSE line, or trip a decoder.
const AWKWARD: &[char] = &[
    '\n', '\r', '\u{2028}', '\u{2029}', '\u{85}', '\0', '\u{feff}', '"', '\\', ':', ' ', '\t',
    '\u{7f}', '\u{1b}', 'é', '中', '😀', '\u{fffd}', 'a', 'Z', '0',
];

/// Strings made mostly of awkward characters.
fn awkward_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(AWKWARD),
            1 => any::<char>(),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A string as a JSON literal: escaped by serde_json (which leaves U+2028 and
/// the like raw), or with every non-ASCII and special character as `\uXXXX`.
fn json_string() -> impl Strategy<Value = String> {
    (awkward_string(), any::<bool>()).prop_map(|(s, escape_all)| {
        if !escape_all {
            return serde_json::to_string(&s).unwrap();
        }
        let mut out = String::from('"');
        for c in s.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out.push('"');
        out
    })
}

/// JSON number text, including forms serde would not write itself.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,2})?",
    ]
}

/// Whitespace a publisher may put between JSON tokens.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["", "", " ", "\n", "\r\n", "\t", " \n\t "][..])
}

/// JSON text of arbitrary values, nested, with arbitrary whitespace between tokens.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((ws(), json_string(), ws(), inner, ws()), 0..6).prop_map(
                |members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(a, k, b, v, c)| format!("{a}{k}{b}:{v}{c}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
            ),
        ]
    })
    .prop_flat_map(|text| (ws(), Just(text), ws()))
    .prop_map(|(a, text, b)| format!("{a}{text}{b}"))
}

/// Event types the validator accepts.
fn valid_event_type() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,64}".prop_filter("not reserved", |t| !t.starts_with("sseplane."))
}

/// Event types the validator must refuse: a character outside the allowed set,
/// empty, too long, or in the reserved namespace.
fn invalid_event_type() -> impl Strategy<Value = String> {
    let bad_char = any::<char>().prop_filter("outside A-Z a-z 0-9 _ - . :", |c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    });
    let bad_char = prop_oneof![
        prop::sample::select(&['\n', '\r', ' ', '\0', '/', '\u{2028}', '\u{feff}', 'é'][..]),
        bad_char,
    ];
    prop_oneof![
        ("[A-Za-z0-9:]{0,20}", bad_char, "[A-Za-z0-9:]{0,20}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        Just(String::new()),
        "[a-z]{65,80}",
        "[A-Za-z0-9_.:-]{0,40}".prop_map(|rest| format!("sseplane.{rest}")),
    ]
}

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| Position { ms, seq })
}

/// One published event: the data text as sent, its type and position.
#[derive(Debug, Clone)]
struct Published {
    json: String,
    event_type: Option<String>,
    position: Option<Position>,
    published_ms: u64,
    traced: bool,
}

fn published() -> impl Strategy<Value = Published> {
    (
        json_text(),
        prop::option::of(valid_event_type()),
        prop::option::of(position()),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(json, event_type, position, published_ms, traced)| Published {
                json,
                event_type,
                position,
                published_ms,
                traced,
            },
        )
}

/// Runs the publish path up to the subscriber's bytes: compact JSON, envelope
/// through the backplane and back, frame. Returns the frame and the body.
fn publish(p: &Published) -> (Frame, EventBody) {
    let raw: Box<RawValue> = serde_json::from_str(&p.json).expect("generated JSON parses");
    let body = EventBody {
        event_type: p.event_type.clone(),
        data: compact_json(&raw),
        published_ms: p.published_ms,
        trace_parent: if p.traced {
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()
        } else {
            String::new()
        },
    };
    let received = EventBody::decode(&body.encode()).expect("the envelope decodes");
    assert_eq!(received, body);
    (Frame::new(p.position, &received), received)
}

/// The event a client should read for `p`, with `id`.
fn expected_event(p: &Published, body: &EventBody, id: Option<String>) -> SseEvent {
    SseEvent {
        event: p.event_type.clone().unwrap_or_else(|| "message".into()),
        data: body.data.clone(),
        id,
    }
}

/// Asserts the only lines are `id: `/`event: `/`data: ` (each at most once, in
/// that order, `data:` present) followed by one blank line.
fn assert_only_intended_lines(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(!text.contains('\r'), "CR in {text:?}");
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("{text:?} does not end with a blank line"));
    let fields: Vec<&str> = body
        .split('\n')
        .map(|line| {
            let (field, _) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("line {line:?} in {text:?}"));
            field
        })
        .collect();
    let allowed = [
        vec!["data"],
        vec!["event", "data"],
        vec!["id", "data"],
        vec!["id", "event", "data"],
    ];
    assert!(
        allowed.contains(&fields),
        "fields {fields:?} in {text:?} are not id/event/data"
    );
}

fn parse(bytes: &[u8]) -> Vec<SseEvent> {
    SseParser::new().feed(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One event on a single-channel stream: intended lines only; read back
    /// exactly, also when the bytes arrive in two pieces; the data is the
    /// published JSON value.
    #[test]
    fn a_frame_reads_back_as_the_published_event(p in published(), split in any::<prop::sample::Index>()) {
        let (frame, body) = publish(&p);
        assert_only_intended_lines(&frame.bytes);
        assert_only_intended_lines(&frame.body());
        let id = p.position.map(|pos| pos.to_string());
        let expected = vec![expected_event(&p, &body, id)];
        prop_assert_eq!(&parse(&frame.bytes), &expected);
        let at = split.index(frame.bytes.len() + 1);
        let mut parser = SseParser::new();
        let mut events = parser.feed(&frame.bytes[..at]);
        events.extend(parser.feed(&frame.bytes[at..]));
        prop_assert_eq!(&events, &expected);
        // Equal values (or both out of serde_json's number range).
        let sent = serde_json::from_str::<Value>(&p.json).ok();
        let read = serde_json::from_str::<Value>(&events[0].data).ok();
        prop_assert_eq!(read, sent);
        prop_assert_eq!(frame.position, p.position);
    }

    /// Streams of several channels write their own id, then the shared body:
    /// still the intended lines, and the id a client keeps resumes every channel.
    #[test]
    fn multi_channel_ids_frame_and_resume(
        p in published(),
        channels in prop::collection::btree_set("[a-z0-9:/@._-]{1,12}", 2..5),
        positions in prop::collection::vec(position(), 5),
    ) {
        let channels: Vec<String> = channels.into_iter().collect();
        let positions = &positions[..channels.len()];
        let ids = StreamIds::new(&channels);
        let token = ids.encode(positions);
        let (frame, body) = publish(&p);
        let mut bytes = format!("id: {token}\n").into_bytes();
        bytes.extend_from_slice(&frame.body());
        assert_only_intended_lines(&bytes);
        let events = parse(&bytes);
        prop_assert_eq!(&events, &vec![expected_event(&p, &body, Some(token.clone()))]);
        prop_assert_eq!(ids.decode(&token, channels.len()).unwrap(), positions.to_vec());
    }

    /// A stream of many events, with the stream's own lines between them: each
    /// event reads back on its own, none bleeds into the next.
    #[test]
    fn events_in_a_stream_stay_apart(ps in prop::collection::vec(published(), 1..6)) {
        let mut stream = retry_line(std::time::Duration::from_millis(1500)).to_vec();
        let mut expected = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let (frame, body) = publish(p);
            stream.extend_from_slice(&frame.bytes);
            expected.push(expected_event(p, &body, None));
            if i % 2 == 0 {
                stream.extend_from_slice(KEEPALIVE);
            }
        }
        stream.extend_from_slice(&gap_frame(&["a", "b"]));
        let mut parser = SseParser::new();
        let events = parser.feed(&stream);
        prop_assert_eq!(events.len(), ps.len() + 1);
        prop_assert_eq!(parser.retry_ms, Some(1500));
        let mut last_id = None;
        for ((event, want), p) in events.iter().zip(&expected).zip(&ps) {
            if let Some(pos) = p.position {
                last_id = Some(pos.to_string());
            }
            prop_assert_eq!(&event.event, &want.event);
            prop_assert_eq!(&event.data, &want.data);
            prop_assert_eq!(&event.id, &last_id);
        }
        prop_assert_eq!(&events[ps.len()].event, "sseplane.gap");
    }

    /// Every id a stream can write is one line of id-safe characters.
    #[test]
    fn ids_are_id_safe(positions in prop::collection::vec(position(), 1..5)) {
        let channels: Vec<String> = (0..positions.len()).map(|i| format!("c{i}")).collect();
        let ids = StreamIds::new(&channels);
        let token = ids.encode(&positions);
        prop_assert!(token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_'), "{}", token);
        prop_assert_eq!(ids.decode(&token, positions.len()).unwrap(), positions);
    }

    /// The validator accepts its documented alphabet (`:` included: a value
    /// after `event: ` may hold colons) and refuses anything else.
    #[test]
    fn event_types_are_validated(valid in valid_event_type(), invalid in invalid_event_type()) {
        prop_assert!(validate_event_type(&valid).is_ok(), "{:?} refused", valid);
        prop_assert!(valid.len() <= MAX_EVENT_TYPE_LEN);
        prop_assert!(validate_event_type(&invalid).is_err(), "{:?} accepted", invalid);
    }
}

#[test]
fn line_breaking_event_types_are_refused() {
    for bad in [
        "a\nid: 1",
        "a\rdata: x",
        "a\r\n",
        "\n",
        "a b",
        "a\0",
        "x\u{2028}y",
        "sseplane.gap",
        "sseplane.",
        "",
    ] {
        assert!(validate_event_type(bad).is_err(), "{bad:?} accepted");
    }
    assert!(validate_event_type("ns:Type.v1_a-b").is_ok());
}

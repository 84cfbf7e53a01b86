//! Server-side SSE framing and the stream ids (`Last-Event-ID` tokens).
//!
//! A stream of one channel uses the channel's position as its id, so the id a
//! subscriber sees is the id the publisher was given. A stream of several channels
//! writes ids that hold its position on *every* channel, `<set>_<pos>_<pos>…`, where
//! `<set>` is a hash of the sorted channel names and the positions follow that
//! order: resuming from any such id is exact on all channels at once.

use std::time::Duration;

use bytes::Bytes;

use crate::event::{BadPosition, Position, TOKEN_EXPIRED_EVENT};

/// The `retry:` directive that opens every stream.
pub fn retry_line(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

/// The comment sent when a stream has been quiet for its keepalive interval.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// The `sseplane.gap` notice naming the channels whose history no longer covers
/// the resume position.
pub fn gap_frame(channels: &[&str]) -> Bytes {
    let data = serde_json::json!({ "channels": channels });
    Bytes::from(format!(
        "event: {}\ndata: {data}\n\n",
        crate::event::GAP_EVENT
    ))
}

/// Why a `Last-Event-ID` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLastEventId {
    /// Not an id sseplane writes.
    #[error("Last-Event-ID is malformed: sseplane did not issue it")]
    Malformed,
    /// A well-formed id of a stream with another set of channels.
    #[error(
        "Last-Event-ID belongs to a stream of other channels: reconnect with the same channels"
    )]
    OtherChannels,
}

impl From<BadPosition> for BadLastEventId {
    fn from(_: BadPosition) -> Self {
        BadLastEventId::Malformed
    }
}

/// The notice that ends a stream whose token expired: the client gets a
/// fresh token and reconnects (resuming from its last id).
pub fn token_expired_frame() -> Bytes {
    Bytes::from(format!(
        "event: {TOKEN_EXPIRED_EVENT}\ndata: {{\"reason\":\"the token has expired; reconnect with a fresh one\"}}\n\n"
    ))
}

/// The id layout of one stream: its sorted channels and their set hash.
#[derive(Debug, Clone)]
pub struct StreamIds {
    set_hash: Option<String>,
}

impl StreamIds {
    /// Ids for a stream over `channels` (sorted, without duplicates).
    pub fn new(channels: &[impl AsRef<str>]) -> StreamIds {
        let set_hash = (channels.len() > 1).then(|| channel_set_hash(channels));
        StreamIds { set_hash }
    }

    /// True when ids carry several positions (and so are written per stream).
    pub fn is_multi(&self) -> bool {
        self.set_hash.is_some()
    }

    /// The id for the given positions (one per channel, in channel order).
    pub fn encode(&self, positions: &[Position]) -> String {
        match &self.set_hash {
            None => positions[0].to_string(),
            Some(hash) => {
                let mut out = String::with_capacity(9 + positions.len() * 24);
                out.push_str(hash);
                for p in positions {
                    out.push('_');
                    out.push_str(&p.to_string());
                }
                out
            }
        }
    }

    /// Parses a `Last-Event-ID` into one position per channel.
    pub fn decode(
        &self,
        token: &str,
        channel_count: usize,
    ) -> Result<Vec<Position>, BadLastEventId> {
        match &self.set_hash {
            None => {
                if token.contains('_') {
                    return Err(BadLastEventId::OtherChannels);
                }
                Ok(vec![token.parse()?])
            }
            Some(hash) => {
                let mut parts = token.split('_');
                let head = parts.next().unwrap_or_default();
                if head.len() != 8 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return match token.parse::<Position>() {
                        Ok(_) => Err(BadLastEventId::OtherChannels),
                        Err(_) => Err(BadLastEventId::Malformed),
                    };
                }
                let positions = parts
                    .map(str::parse)
                    .collect::<Result<Vec<Position>, _>>()?;
                if head != hash || positions.len() != channel_count {
                    return Err(BadLastEventId::OtherChannels);
                }
                Ok(positions)
            }
        }
    }
}

/// FNV-1a over the channel names (each followed by a newline), as 8 hex digits:
/// stable across builds and replicas, which `std`'s hasher is not.
fn channel_set_hash(channels: &[impl AsRef<str>]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for channel in channels {
        for b in channel.as_ref().bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:08x}", (hash >> 32) as u32 ^ hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ms: u64, seq: u64) -> Position {
        Position { ms, seq }
    }

    #[test]
    fn single_channel_ids_are_positions() {
        let ids = StreamIds::new(&["a"]);
        assert!(!ids.is_multi());
        assert_eq!(ids.encode(&[pos(7, 1)]), "7-1");
        assert_eq!(ids.decode("7-1", 1).unwrap(), vec![pos(7, 1)]);
        assert_eq!(ids.decode("junk", 1), Err(BadLastEventId::Malformed));
    }

    #[test]
    fn multi_channel_ids_round_trip_and_check_the_set() {
        let ids = StreamIds::new(&["a", "b"]);
        let token = ids.encode(&[pos(1, 0), pos(2, 3)]);
        assert_eq!(ids.decode(&token, 2).unwrap(), vec![pos(1, 0), pos(2, 3)]);
        let other = StreamIds::new(&["a", "c"]).encode(&[pos(1, 0), pos(2, 3)]);
        assert_eq!(ids.decode(&other, 2), Err(BadLastEventId::OtherChannels));
        assert_eq!(ids.decode("1-0", 2), Err(BadLastEventId::OtherChannels));
        assert_eq!(ids.decode("zz_1-0_2-0", 2), Err(BadLastEventId::Malformed));
        let head = &token[..8];
        assert_eq!(
            ids.decode(&format!("{head}_1-0_x"), 2),
            Err(BadLastEventId::Malformed)
        );
        assert_eq!(
            StreamIds::new(&["a"]).decode(&token, 1),
            Err(BadLastEventId::OtherChannels)
        );
    }

    #[test]
    fn gap_notice_names_channels() {
        assert_eq!(
            &gap_frame(&["a", "b"])[..],
            b"event: sseplane.gap\ndata: {\"channels\":[\"a\",\"b\"]}\n\n"
        );
    }
}

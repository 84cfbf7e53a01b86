//! An SSE client: a WHATWG-conformant parser and a stream that reconnects like
//! a browser's `EventSource` (honouring `retry:` and sending `Last-Event-ID`).
//! Used by `sseplane watch` and by the tests.

use std::time::Duration;

use futures_util::StreamExt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` type (`message` when none was given).
    pub event: String,
    /// The data lines joined by `\n`.
    pub data: String,
    /// The last event id in effect when the event was dispatched.
    pub id: Option<String>,
}

/// Incremental parser: feed bytes, take events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// The last `retry:` value seen, in milliseconds.
    pub retry_ms: Option<u64>,
    /// Comment lines seen (`: keepalive` among them).
    pub comments: u64,
    /// Whether the first bytes were checked for a byte-order mark.
    bom_checked: bool,
    /// A CR ended the last line; a following LF belongs to it.
    after_cr: bool,
}

/// UTF-8 byte-order mark, skipped at the start of a stream.
const BOM: &[u8] = "\u{feff}".as_bytes();

impl SseParser {
    /// A parser with no last event id.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// The last event id (what a reconnect sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Parses `bytes`, returning the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let mut line = std::mem::take(&mut self.buffer);
                    // A byte-order mark can only open the stream, so it is in
                    // the first line, however the bytes were split.
                    if !self.bom_checked {
                        self.bom_checked = true;
                        if line.starts_with(BOM) {
                            line.drain(..BOM.len());
                        }
                    }
                    if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.buffer.push(b),
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

/// What a reconnecting client yields.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A stream opened on `replica` (from the `X-Sseplane-Replica` header).
    Connected {
        /// Replica that serves the stream.
        replica: String,
    },
    /// An event.
    Event(SseEvent),
    /// The stream ended or failed; the client will reconnect.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// Follows a stream like a browser: on any end it waits `retry:` and reconnects
/// with `Last-Event-ID`, to `urls` in turn (so a test can move it between
/// replicas). Stops when the receiver is dropped.
pub fn follow(
    urls: Vec<String>,
    last_event_id: Option<String>,
) -> tokio::sync::mpsc::Receiver<ClientEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut parser = SseParser::new();
        let mut last_id = last_event_id;
        let mut attempt = 0usize;
        loop {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            let mut request = http.get(url).header("accept", "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id.as_str());
            }
            let reason = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let replica = response
                        .headers()
                        .get(crate::http::REPLICA_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_owned();
                    if tx.send(ClientEvent::Connected { replica }).await.is_err() {
                        return;
                    }
                    let mut body = response.bytes_stream();
                    parser = SseParser {
                        last_id: last_id.clone(),
                        retry_ms: parser.retry_ms,
                        ..SseParser::new()
                    };
                    loop {
                        // Stop, closing the connection, when nobody listens any more.
                        let next = tokio::select! {
                            next = body.next() => next,
                            _ = tx.closed() => return,
                        };
                        match next {
                            Some(Ok(chunk)) => {
                                for event in parser.feed(&chunk) {
                                    if tx.send(ClientEvent::Event(event)).await.is_err() {
                                        return;
                                    }
                                }
                                last_id = parser.last_event_id().map(str::to_owned);
                            }
                            Some(Err(e)) => break format!("stream failed: {e}"),
                            None => break "stream ended".to_owned(),
                        }
                    }
                }
                Ok(response) => format!("HTTP {}", response.status()),
                Err(e) => format!("connect failed: {e}"),
            };
            if tx.send(ClientEvent::Disconnected { reason }).await.is_err() {
                return;
            }
            let retry = parser.retry_ms.unwrap_or(3000).min(5000);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(retry)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_comments_and_multiline_data() {
        let mut p = SseParser::new();
        let events = p.feed(
            b"retry: 3000\n\n: keepalive\n\nid: 1-0\nevent: T\ndata: a\ndata: b\n\ndata:c\n\n",
        );
        assert_eq!(p.retry_ms, Some(3000));
        assert_eq!(p.comments, 1);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "T".into(),
                    data: "a\nb".into(),
                    id: Some("1-0".into())
                },
                SseEvent {
                    event: "message".into(),
                    data: "c".into(),
                    id: Some("1-0".into())
                },
            ]
        );
    }

    #[test]
    fn handles_crlf_split_chunks_and_ids_without_data() {
        let mut p = SseParser::new();
        assert!(p.feed(b"id: 7\r").is_empty());
        assert!(p.feed(b"\n\r\nda").is_empty());
        assert_eq!(p.last_event_id(), Some("7"));
        let events = p.feed(b"ta: x\r\rdata\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "x");
        assert_eq!(events[1].data, "");
    }
}

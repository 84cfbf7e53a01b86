//! The benchmark's own SSE client: a raw HTTP/1.1 GET over TCP (so one
//! subscriber costs a socket and a small task, not an HTTP client stack), a
//! chunked-transfer decoder, and the shared SSE parser.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// An `http://host:port/path?query` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (for the `Host` header).
    pub host: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Path and query.
    pub path: String,
}

impl HttpUrl {
    /// Parses a loopback `http://` URL; anything else is refused (the
    /// benchmark never sends to another machine).
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?),
            None => (authority, 80),
        };
        let ip: IpAddr = match host {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            h => h
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| format!("{url}: give a loopback IP address"))?,
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{url}: the benchmark only talks to loopback addresses"
            ));
        }
        Ok(HttpUrl {
            host: authority.to_owned(),
            addr: SocketAddr::new(ip, port),
            path: path.to_owned(),
        })
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    size_line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd(u8),
    Done,
}

impl Dechunker {
    /// Feeds raw body bytes, appending decoded data to `out`. False once the
    /// last chunk was seen.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        let line = String::from_utf8_lossy(&self.size_line);
                        let hex = line.trim().split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                        self.size_line.clear();
                        self.state = if size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data(size)
                        };
                    } else {
                        self.size_line.push(b);
                    }
                }
                ChunkState::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd(left) => {
                    input = &input[1..];
                    self.state = if left == 1 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - 1)
                    };
                }
                ChunkState::Done => return false,
            }
        }
        self.state != ChunkState::Done
    }
}

/// An open SSE response: the socket, and how its body is framed.
pub struct SseResponse {
    /// The connection.
    pub stream: TcpStream,
    /// Body bytes read along with the head.
    pub leftover: Vec<u8>,
    /// Whether the body is chunked.
    pub chunked: bool,
}

/// Opens `GET url` with `Accept: text/event-stream`, from `source` when given
/// (to spread connections over 127.0.0.x past 64k ports), and reads the head.
pub async fn open_stream(url: &HttpUrl, source: Option<IpAddr>) -> io::Result<SseResponse> {
    open_stream_from(url, source, None)
        .await
        .map_err(|refused| match refused {
            OpenError::Io(e) => e,
            OpenError::Refused { status, .. } => {
                io::Error::other(format!("stream refused: {status}"))
            }
        })
}

/// Why a stream did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The connection failed.
    Io(io::Error),
    /// The server answered something other than 200.
    Refused {
        /// The status line.
        status: String,
        /// Its `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// [`open_stream`], resuming after `last_event_id` when given, and telling a
/// refusal (with its `Retry-After`) from a failed connection.
pub async fn open_stream_from(
    url: &HttpUrl,
    source: Option<IpAddr>,
    last_event_id: Option<&str>,
) -> Result<SseResponse, OpenError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(url.addr).await?;
    stream.set_nodelay(true)?;
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{resume}\r\n",
        url.path, url.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(OpenError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            )));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let leftover = head.split_off(end + 4);
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") {
                let status = text.lines().next().unwrap_or("").to_owned();
                let retry_after = text
                    .lines()
                    .find_map(|l| l.strip_prefix("retry-after:"))
                    .and_then(|v| v.trim().parse().ok());
                return Err(OpenError::Refused {
                    status,
                    retry_after,
                });
            }
            let chunked = text.contains("transfer-encoding: chunked");
            return Ok(SseResponse {
                stream,
                leftover,
                chunked,
            });
        }
        if head.len() > 16 * 1024 {
            return Err(OpenError::Io(io::Error::other("response head too large")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_loopback_only() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/v1/stream?channel=a").unwrap();
        assert_eq!(url.addr.port(), 8080);
        assert_eq!(url.path, "/v1/stream?channel=a");
        assert!(HttpUrl::parse("http://localhost:1/").is_ok());
        assert!(HttpUrl::parse("http://10.0.0.1:8080/").is_err());
        assert!(HttpUrl::parse("http://example.com/").is_err());
        assert!(HttpUrl::parse("https://127.0.0.1/").is_err());
    }

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        assert!(d.feed(b"5\r\nhel", &mut out));
        assert!(d.feed(b"lo\r\n3;ext=1\r\n, w\r\n", &mut out));
        assert!(!d.feed(b"0\r\n\r\n", &mut out));
        assert_eq!(out, b"hello, w");
    }
}

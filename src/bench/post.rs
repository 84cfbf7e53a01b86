//! The benchmark's publisher: kept-alive HTTP/1.1 `POST`s over a raw TCP
//! connection, one request at a time, each answer read whole. A load generator
//! that shares the machine with the servers must cost as little as it can per
//! publish, or it measures itself: this costs a write and a read per request,
//! where a general HTTP client adds a connection pool, a dispatch task and
//! header maps.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{Dechunker, HttpUrl};

/// Most bytes of an answer's head.
const MAX_HEAD: usize = 16 * 1024;

/// One kept-alive connection for `POST`s, reopened when the server closes it.
#[derive(Default)]
pub struct PostConnection {
    stream: Option<(std::net::SocketAddr, TcpStream)>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed answer head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AnswerHead {
    status: u16,
    head_len: usize,
    framing: BodyFraming,
    keep_alive: bool,
}

impl PostConnection {
    /// Sends `POST url` with `body` and reads the answer; returns its status.
    /// An I/O error drops the connection (the next call opens a new one).
    pub async fn post(
        &mut self,
        url: &HttpUrl,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<u16> {
        let result = self.exchange(url, content_type, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        url: &HttpUrl,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<u16> {
        if self
            .stream
            .as_ref()
            .is_none_or(|(addr, _)| *addr != url.addr)
        {
            let stream = TcpStream::connect(url.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some((url.addr, stream));
        }
        let (_, stream) = self.stream.as_mut().expect("connected above");
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                url.path,
                url.host,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await?;

        self.buf.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("answer head too large"));
            }
            read_more(stream, &mut self.buf).await?;
        };
        let mut body_bytes = self.buf.split_off(head.head_len);
        match head.framing {
            BodyFraming::Length(len) => {
                while body_bytes.len() < len {
                    read_more(stream, &mut body_bytes).await?;
                }
            }
            BodyFraming::Chunked => {
                // Done at the last chunk and the blank line after it (no trailers).
                let mut dechunker = Dechunker::default();
                let mut data = Vec::new();
                let mut fed = 0;
                loop {
                    let more = dechunker.feed(&body_bytes[fed..], &mut data);
                    fed = body_bytes.len();
                    if !more && body_bytes.ends_with(b"\r\n\r\n") {
                        break;
                    }
                    read_more(stream, &mut body_bytes).await?;
                }
            }
            BodyFraming::UntilClose => while stream.read_buf(&mut body_bytes).await? > 0 {},
        }
        if !head.keep_alive || head.framing == BodyFraming::UntilClose {
            self.stream = None;
        }
        Ok(head.status)
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection mid-answer",
        ));
    }
    Ok(())
}

/// Parses an answer head from `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<AnswerHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut headers);
    let head_len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("bad answer head: {e}"))),
    };
    let status = answer.code.unwrap_or(0);
    let mut keep_alive = answer.version == Some(1);
    let mut framing = BodyFraming::UntilClose;
    for header in answer.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse()
                .map_err(|_| io::Error::other("bad Content-Length in the answer"))?;
            if framing != BodyFraming::Chunked {
                framing = BodyFraming::Length(len);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                framing = BodyFraming::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                keep_alive = false;
            } else if value.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = BodyFraming::Length(0);
    }
    Ok(Some(AnswerHead {
        status,
        head_len,
        framing,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"results\"")
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, BodyFraming::Length(12));
        assert!(head.keep_alive);
        assert_eq!(head.head_len, 39);

        let head = parse_head(
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.status, head.framing, head.keep_alive),
            (201, BodyFraming::Chunked, false)
        );

        let head = parse_head(b"HTTP/1.0 202 Accepted\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.framing, head.keep_alive),
            (BodyFraming::UntilClose, false)
        );

        let head = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(0));

        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    /// Reads one request (head and `Content-Length` body) from `socket`.
    async fn read_request(socket: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = request.parse(&buf) {
                let length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap();
                if buf.len() >= n + length {
                    return buf[n..n + length].to_vec();
                }
            }
            assert!(socket.read_buf(&mut buf).await.unwrap() > 0, "client left");
        }
    }

    #[tokio::test]
    async fn kept_alive_answers_of_every_framing_then_a_new_connection_after_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            HttpUrl::parse(&format!("http://{}/pub", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            assert_eq!(read_request(&mut first).await, b"one");
            // Chunked, written in pieces.
            first
                .write_all(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
                .await
                .unwrap();
            first.write_all(b"lo\r\n0\r\n").await.unwrap();
            first.write_all(b"\r\n").await.unwrap();
            assert_eq!(read_request(&mut first).await, b"two");
            first
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            assert_eq!(read_request(&mut first).await, b"three");
            first
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let (mut second, _) = listener.accept().await.unwrap();
            assert_eq!(read_request(&mut second).await, b"four");
            second
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let mut connection = PostConnection::default();
        for (body, status) in [("one", 201), ("two", 202), ("three", 200), ("four", 429)] {
            let got = connection
                .post(&url, "text/plain", body.as_bytes())
                .await
                .unwrap();
            assert_eq!(got, status, "answer to {body}");
        }
        server.await.unwrap();
    }
}

//! Tokens, channel rights, the admin token and the abuse limits, over HTTP
//! against real `sseplane` processes (and a real Redis).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Redis, Replica, WAIT};
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims with the given rights, valid for an hour.
fn claims(subscribe: &[&str], publish: &[&str]) -> Value {
    json!({
        "exp": now() + 3600,
        "sub": "tester",
        "sseplane": { "subscribe": subscribe, "publish": publish },
    })
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

fn hs256_with(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    encode(&header, claims, &key).unwrap()
}

/// A token with `{"alg":"none"}` and no signature.
fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// What a request was answered.
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = if status == 200
        && response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"))
    {
        Value::Null
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    Answer {
        status,
        challenge,
        body,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn publish(replica: &Replica, token: Option<&str>, body: Value) -> Answer {
    let mut request = http().post(replica.url("/v1/publish")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request).await
}

/// Opens a stream and reads only the answer's head (the body is dropped).
async fn open_stream(
    url: String,
    setup: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Answer {
    answer(setup(http().get(url).header("accept", "text/event-stream"))).await
}

fn assert_refused(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.code(), code, "{}", answer.body);
    assert!(!answer.message().is_empty());
    let challenge = answer
        .challenge
        .as_deref()
        .expect("a WWW-Authenticate header");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

/// A policy file: `private:*` needs a token to subscribe; `open:*` needs none
/// to publish either.
fn policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        r#"
apiVersion: sseplane.dev/v1alpha1
kind: ChannelPolicy
metadata: { name: private }
spec:
  channels: ["private:*"]
  auth: { subscribe: true }
---
apiVersion: sseplane.dev/v1alpha1
kind: ChannelPolicy
metadata: { name: open }
spec:
  channels: ["open:*"]
  auth: { publish: false }
"#,
    )
    .unwrap();
    dir
}

/// A replica with the HS256 secret, no leeway, and the policies in `dir`.
async fn secured(redis: Option<&Redis>, dir: &tempfile::TempDir) -> Replica {
    let policies = dir.path().to_str().unwrap();
    let args = [
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "0s",
        "--policies",
        policies,
    ];
    Replica::start("a", redis, &args).await
}

#[tokio::test]
async fn publishing_needs_a_valid_token_that_covers_the_channel() {
    let redis = Redis::start().await;
    let dir = policies();
    let replica = secured(Some(&redis), &dir).await;
    let event = json!({"channel": "game:1", "data": {"n": 1}});

    let missing = publish(&replica, None, event.clone()).await;
    assert_refused(&missing, 401, "token_required");
    assert_eq!(
        missing.challenge.as_deref(),
        Some(r#"Bearer realm="sseplane""#)
    );

    let rights = claims(&[], &["game:*"]);
    let mut expired = rights.clone();
    expired["exp"] = json!(now() - 60);
    let mut not_yet = rights.clone();
    not_yet["nbf"] = json!(now() + 600);
    let mut string_exp = rights.clone();
    string_exp["exp"] = json!("never");
    let bad_tokens = [
        ("malformed", "not-a-jwt".to_owned()),
        ("expired", hs256(&expired)),
        ("not yet valid", hs256(&not_yet)),
        ("exp not a number", hs256(&string_exp)),
        ("wrong signature", hs256_with("another-secret", &rights)),
        ("alg none", unsigned(&rights)),
        (
            "RS256 where only a secret is configured",
            signed(Algorithm::RS256, None, "rsa-private.pem", &rights),
        ),
    ];
    for (what, token) in &bad_tokens {
        let refused = publish(&replica, Some(token), event.clone()).await;
        assert_refused(&refused, 401, "invalid_token");
        assert!(
            refused
                .challenge
                .as_deref()
                .unwrap()
                .contains(r#"error="invalid_token""#),
            "{what}: {:?}",
            refused.challenge
        );
    }
    let expired_answer = publish(&replica, Some(&bad_tokens[1].1), event.clone()).await;
    assert!(
        expired_answer.message().contains("expired"),
        "{}",
        expired_answer.message()
    );

    // Another scheme than Bearer is refused, not ignored.
    let basic = answer(
        http()
            .post(replica.url("/v1/publish"))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .json(&event),
    )
    .await;
    assert_refused(&basic, 401, "invalid_token");

    let token = hs256(&rights);
    let ok = publish(&replica, Some(&token), event.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    let elsewhere = publish(
        &replica,
        Some(&token),
        json!({"channel": "chat:1", "data": 1}),
    )
    .await;
    assert_refused(&elsewhere, 403, "forbidden");
    assert!(elsewhere.challenge.unwrap().contains("insufficient_scope"));

    // All or nothing: one forbidden channel refuses the whole publish.
    let mixed = publish(
        &replica,
        Some(&token),
        json!({"channels": ["game:2", "chat:2"], "data": 1}),
    )
    .await;
    assert_refused(&mixed, 403, "forbidden");
    assert_eq!(redis_len(&redis, "game:1").await, json!(1));
    assert_eq!(
        redis_len(&redis, "game:2").await,
        json!(0),
        "nothing of a refused publish is kept"
    );

    // A policy may open publishing again.
    let open = publish(&replica, None, json!({"channel": "open:1", "data": 1})).await;
    assert_eq!(open.status, 200, "{}", open.body);

    // Broadcast needs "publish": ["*"].
    let broadcast = |token: Option<String>| {
        let mut request = http()
            .post(replica.url("/v1/broadcast"))
            .json(&json!({"data": "hi"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request)
    };
    assert_refused(&broadcast(None).await, 401, "token_required");
    assert_refused(&broadcast(Some(token.clone())).await, 403, "forbidden");
    let everything = hs256(&claims(&[], &["*"]));
    assert_eq!(broadcast(Some(everything)).await.status, 200);
}

/// Entries kept for `channel` in Redis (0 when the channel has none).
async fn redis_len(redis: &Redis, channel: &str) -> Value {
    let keys: Vec<String> = redis.cmd(&["KEYS", &format!("*{channel}*")]).await;
    let mut total = 0i64;
    for key in keys {
        let kind: String = redis.cmd(&["TYPE", &key]).await;
        if kind == "stream" {
            total += redis.cmd::<i64>(&["XLEN", &key]).await;
        }
    }
    json!(total)
}

#[tokio::test]
async fn subscribing_takes_the_token_from_header_cookie_or_query() {
    let dir = policies();
    let replica = secured(None, &dir).await;
    let url = replica.stream_url(&["private:1"]);
    assert_refused(
        &open_stream(url.clone(), |r| r).await,
        401,
        "token_required",
    );

    let token = hs256(&claims(&["private:1"], &[]));
    let header = open_stream(url.clone(), |r| r.bearer_auth(&token)).await;
    assert_eq!(header.status, 200);
    let cookie = open_stream(url.clone(), |r| {
        r.header("cookie", format!("theme=dark; sseplane_token={token}"))
    })
    .await;
    assert_eq!(cookie.status, 200);
    let query = open_stream(format!("{url}&access_token={token}"), |r| r).await;
    assert_eq!(query.status, 200);

    // The header wins over the query: a bad header is not rescued.
    let both = open_stream(format!("{url}&access_token={token}"), |r| {
        r.bearer_auth("junk")
    })
    .await;
    assert_refused(&both, 401, "invalid_token");

    // A stream of several channels needs rights to every one.
    let two = replica.stream_url(&["private:1", "private:2"]);
    let refused = open_stream(format!("{two}&access_token={token}"), |r| r).await;
    assert_refused(&refused, 403, "forbidden");
    assert!(
        refused.message().contains("private:2"),
        "{}",
        refused.message()
    );
    let wide = hs256(&claims(&["private:*"], &[]));
    assert_eq!(
        open_stream(format!("{two}&access_token={wide}"), |r| r)
            .await
            .status,
        200
    );

    // Channels whose policy asks for nothing stay open to all.
    assert_eq!(
        open_stream(replica.stream_url(&["news"]), |r| r)
            .await
            .status,
        200
    );
}

/// A replica verifying tokens with the PEM public key fixture `file`.
async fn with_public_key(file: &str) -> Replica {
    let path = fixture(file);
    Replica::start(file, None, &["--jwt-public-key", path.to_str().unwrap()]).await
}

#[tokio::test]
async fn rs256_and_es256_from_pem_and_jwks_and_no_algorithm_confusion() {
    let rights = claims(&["private:*"], &["game:*"]);
    let event = json!({"channel": "game:1", "data": 1});

    let pem = with_public_key("rsa-public.pem").await;
    let rs = signed(Algorithm::RS256, None, "rsa-private.pem", &rights);
    assert_eq!(publish(&pem, Some(&rs), event.clone()).await.status, 200);
    // HS256 "signed" with the public key as secret: the classic confusion.
    let public_pem = std::fs::read_to_string(fixture("rsa-public.pem")).unwrap();
    let confused = hs256_with(&public_pem, &rights);
    assert_refused(
        &publish(&pem, Some(&confused), event.clone()).await,
        401,
        "invalid_token",
    );
    let es = signed(Algorithm::ES256, None, "ec-private.pem", &rights);
    assert_refused(
        &publish(&pem, Some(&es), event.clone()).await,
        401,
        "invalid_token",
    );

    let ec = with_public_key("ec-public.pem").await;
    assert_eq!(publish(&ec, Some(&es), event.clone()).await.status, 200);

    // A JWKS holding only the EC key at first; adding the RSA key is picked
    // up without a restart.
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let ec_only = json!({"keys": [jwks["keys"][1]]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, ec_only.to_string()).unwrap();
    let replica = Replica::start("jwks", None, &["--jwks", path.to_str().unwrap()]).await;
    let es_kid = signed(Algorithm::ES256, Some("ec-1"), "ec-private.pem", &rights);
    assert_eq!(
        publish(&replica, Some(&es_kid), event.clone()).await.status,
        200
    );
    let rs_kid = signed(Algorithm::RS256, Some("rsa-1"), "rsa-private.pem", &rights);
    assert_refused(
        &publish(&replica, Some(&rs_kid), event.clone()).await,
        401,
        "invalid_token",
    );
    std::fs::write(&path, jwks.to_string()).unwrap();
    wait_for("the JWKS to be reloaded", WAIT, || async {
        (publish(&replica, Some(&rs_kid), event.clone()).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let replica = Replica::start(
        "a",
        None,
        &[
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            "sseplane",
            "--jwt-issuer",
            "https://auth.example",
        ],
    )
    .await;
    let event = json!({"channel": "game:1", "data": 1});
    let with = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = claims(&[], &["*"]);
        if let Some(aud) = aud {
            c["aud"] = json!(aud);
        }
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        hs256(&c)
    };
    let good = with(Some("sseplane"), Some("https://auth.example"));
    assert_eq!(
        publish(&replica, Some(&good), event.clone()).await.status,
        200
    );
    for (what, token) in [
        ("no aud", with(None, Some("https://auth.example"))),
        (
            "other aud",
            with(Some("billing"), Some("https://auth.example")),
        ),
        ("no iss", with(Some("sseplane"), None)),
        (
            "other iss",
            with(Some("sseplane"), Some("https://evil.example")),
        ),
    ] {
        let refused = publish(&replica, Some(&token), event.clone()).await;
        assert_eq!(refused.status, 401, "{what}: {}", refused.body);
        assert_eq!(refused.code(), "invalid_token", "{what}");
    }
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let dir = policies();
    let replica = secured(None, &dir).await;
    let mut short = claims(&["private:*"], &["private:*"]);
    short["exp"] = json!(now() + 3);
    let token = hs256(&short);
    let response = http()
        .get(format!(
            "{}&access_token={token}",
            replica.stream_url(&["private:1"])
        ))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let long = hs256(&claims(&[], &["private:*"]));
    let published = publish(
        &replica,
        Some(&long),
        json!({"channel": "private:1", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(published.status, 200);
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = chunks.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token: {body}");
    assert!(body.contains("data: {\"n\":1}"), "{body}");
    assert!(
        body.trim_end().ends_with(
            "event: sseplane.token_expired\ndata: {\"reason\":\"the token has expired; reconnect with a fresh one\"}"
        ),
        "{body}"
    );
    // Reconnecting with the same token is refused: the client needs a new one.
    let again = open_stream(
        format!(
            "{}&access_token={token}",
            replica.stream_url(&["private:1"])
        ),
        |r| r,
    )
    .await;
    assert_refused(&again, 401, "invalid_token");
}

/// Reads `response`'s body until it holds `needle` (within [`WAIT`]).
async fn read_until(response: reqwest::Response, needle: &str) -> String {
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = chunks.next().await {
            body.push_str(&String::from_utf8_lossy(
                &chunk.expect("the stream goes on"),
            ));
            if body.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {needle:?} on the stream: {body}");
    body
}

#[tokio::test]
async fn tokens_with_far_future_times_get_ordinary_answers() {
    let dir = policies();
    // The default leeway (5 s): `exp` = 2^63−1 plus the leeway is past what
    // the clock can hold.
    let replica = Replica::start(
        "far",
        None,
        &[
            "--jwt-secret",
            SECRET,
            "--policies",
            dir.path().to_str().unwrap(),
        ],
    )
    .await;
    let streaming = reqwest::Client::new();
    for (n, exp) in [i64::MAX as u64, u64::MAX, 1 << 62].into_iter().enumerate() {
        let mut never = claims(&["private:*"], &["private:*"]);
        never["exp"] = json!(exp);
        let token = hs256(&never);
        let channel = format!("private:never{n}");
        let stream = streaming
            .get(format!(
                "{}&access_token={token}",
                replica.stream_url(&[&channel])
            ))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("exp {exp}: a stream answer, not a dropped connection: {e}")
            });
        assert_eq!(stream.status(), 200, "exp {exp}");
        let published = publish(
            &replica,
            Some(&token),
            json!({"channel": channel, "data": {"n": n}}),
        )
        .await;
        assert_eq!(published.status, 200, "exp {exp}: {}", published.body);
        // The stream was not ended at once by an expiry timer.
        read_until(stream, &format!("data: {{\"n\":{n}}}")).await;
    }

    let event = json!({"channel": "private:1", "data": 1});
    for nbf in [i64::MAX as u64, u64::MAX] {
        let mut later = claims(&["private:*"], &["private:*"]);
        later["nbf"] = json!(nbf);
        let token = hs256(&later);
        let refused = publish(&replica, Some(&token), event.clone()).await;
        assert_refused(&refused, 401, "invalid_token");
        assert!(
            refused.message().contains("not valid yet"),
            "{}",
            refused.message()
        );
        let url = format!(
            "{}&access_token={token}",
            replica.stream_url(&["private:1"])
        );
        assert_refused(&open_stream(url, |r| r).await, 401, "invalid_token");
    }
}

#[tokio::test]
async fn the_admin_api_takes_its_own_token() {
    let replica = Replica::start("a", None, &["--admin-token", "admin-secret"]).await;
    for path in ["/v1/diagnostics", "/v1/log-level"] {
        let none = answer(http().get(replica.admin_url(path))).await;
        assert_refused(&none, 401, "token_required");
        let wrong = answer(http().get(replica.admin_url(path)).bearer_auth("guess")).await;
        assert_refused(&wrong, 401, "invalid_token");
        let right = answer(
            http()
                .get(replica.admin_url(path))
                .bearer_auth("admin-secret"),
        )
        .await;
        assert_eq!(right.status, 200, "{path}: {}", right.body);
    }
    let change = answer(
        http()
            .put(replica.admin_url("/v1/log-level"))
            .json(&json!({"filter": "debug"})),
    )
    .await;
    assert_eq!(change.status, 401);
    // Probes and scrapes never need it.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let open = http().get(replica.admin_url(path)).send().await.unwrap();
        assert_eq!(open.status(), 200, "{path}");
    }
}

/// A replica on the test policies whose log goes to a file.
struct Logged {
    replica: Replica,
    log: PathBuf,
    _dirs: [tempfile::TempDir; 2],
}

impl Logged {
    async fn start(extra: &[&str], env: &[(&str, &str)]) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("replica.log");
        let policies = policies();
        let mut args = extra.to_vec();
        args.extend(["--policies", policies.path().to_str().unwrap()]);
        let replica = Replica::start_logged("a", None, &args, env, Some(&log)).await;
        Logged {
            replica,
            log,
            _dirs: [dir, policies],
        }
    }

    /// What the replica logged so far.
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

#[tokio::test]
async fn tokens_stay_out_of_the_logs() {
    let logged = Logged::start(
        &["--jwt-secret", SECRET],
        &[("SSEPLANE_LOG_LEVEL", "trace")],
    )
    .await;
    let replica = &logged.replica;
    let token = hs256(&claims(&["private:*"], &["*"]));
    let url = format!(
        "{}&access_token={token}",
        replica.stream_url(&["private:1"])
    );
    assert_eq!(open_stream(url, |r| r).await.status, 200);
    assert_eq!(
        publish(
            replica,
            Some(&token),
            json!({"channel": "private:1", "data": 1})
        )
        .await
        .status,
        200
    );
    let refused = publish(
        replica,
        Some(&format!("{token}x")),
        json!({"channel": "a", "data": 1}),
    )
    .await;
    assert_eq!(refused.status, 401);
    let text = logged.text();
    assert!(
        text.contains("published"),
        "the log was written at trace level"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "a token reached the log");
}

#[tokio::test]
async fn limits_answer_with_the_error_shape() {
    let replica = Replica::start(
        "a",
        None,
        &[
            "--max-streams",
            "3",
            "--max-streams-per-client",
            "2",
            "--body-timeout",
            "1s",
        ],
    )
    .await;
    // Two streams per address, then 429; another address (127.0.0.2) may
    // open more until the replica's cap of three.
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = http().get(replica.stream_url(&["x"])).send().await.unwrap();
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    let third = open_stream(replica.stream_url(&["x"]), |r| r).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.code(), "too_many_streams");
    let other_address = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let fourth = other_address
        .get(replica.stream_url(&["x"]))
        .send()
        .await
        .unwrap();
    assert_eq!(fourth.status(), 200);
    let fifth = answer(other_address.get(replica.stream_url(&["x"]))).await;
    assert_eq!(fifth.status, 503, "{}", fifth.body);
    assert_eq!(fifth.code(), "stream_limit");
    // Places come back when streams close.
    drop(held);
    wait_for("a place to free up", WAIT, || async {
        let response = http().get(replica.stream_url(&["x"])).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    // An oversized request head.
    let huge = "x".repeat(20 * 1024);
    let headers = answer(
        http()
            .get(replica.url("/v1/stream?channel=a"))
            .header("x-big", &huge),
    )
    .await;
    assert_eq!(headers.status, 431);
    assert_eq!(headers.code(), "headers_too_large");

    // A body that never finishes arriving.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", replica.public))
        .await
        .unwrap();
    tcp.write_all(
        b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"chan",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.windows(4).any(|w| w == b"\r\n\r\n") && reply.ends_with(b"}}") {
                break;
            }
        }
    })
    .await
    .expect("a slow body is answered, not waited on forever");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""code":"body_timeout""#), "{reply}");
}

#[tokio::test]
async fn without_a_key_auth_is_off_and_the_start_says_so() {
    let logged = Logged::start(&[], &[]).await;
    let replica = &logged.replica;
    let text = logged.text();
    assert!(
        text.contains("auth is off, publishing is open"),
        "no warning at start: {text}"
    );
    // Publishing is open, and so is a channel whose policy asks for tokens.
    assert_eq!(
        publish(replica, None, json!({"channel": "game:1", "data": 1}))
            .await
            .status,
        200
    );
    let stream = open_stream(replica.stream_url(&["private:1"]), |r| r).await;
    assert_eq!(stream.status, 200);
}

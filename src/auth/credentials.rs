//! Where a request's token comes from, first found wins: `Authorization:
//! Bearer`, then the token cookie (browsers), then the `access_token` query
//! parameter (`EventSource` cannot set headers).

use axum::http::{header, HeaderMap};

/// The query parameter that carries a token.
pub const QUERY_PARAMETER: &str = "access_token";
/// The default name of the cookie that carries a token.
pub const DEFAULT_COOKIE: &str = "sseplane_token";

/// A request's token, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No token anywhere.
    None,
    /// A token.
    Token(String),
    /// An `Authorization` header of another scheme, or not text.
    Malformed(&'static str),
}

impl Credentials {
    /// The token, if one was found.
    pub fn token(&self) -> Option<&str> {
        match self {
            Credentials::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// The token of an `Authorization: Bearer` header, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed("the Authorization header is not text");
    };
    let mut parts = value.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Credentials::Malformed("send the token as Authorization: Bearer <token>");
    }
    Credentials::Token(token.to_owned())
}

/// Finds the token of a request: header, then cookie `cookie_name`, then the
/// `access_token` parameter of `query`.
pub fn credentials(headers: &HeaderMap, query: Option<&str>, cookie_name: &str) -> Credentials {
    let bearer = bearer(headers);
    if bearer != Credentials::None {
        return bearer;
    }
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=') {
                let token = token.trim().trim_matches('"');
                if name.trim() == cookie_name && !token.is_empty() {
                    return Credentials::Token(token.to_owned());
                }
            }
        }
    }
    if let Some(query) = query {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == QUERY_PARAMETER && !value.is_empty() {
                return Credentials::Token(value.into_owned());
            }
        }
    }
    Credentials::None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_header_wins_then_the_cookie_then_the_query() {
        let all = headers(&[
            ("authorization", "Bearer from-header"),
            ("cookie", "a=b; sseplane_token=from-cookie"),
        ]);
        let query = Some("channel=x&access_token=from-query");
        assert_eq!(
            credentials(&all, query, DEFAULT_COOKIE).token(),
            Some("from-header")
        );
        let cookie = headers(&[("cookie", "a=b; sseplane_token=from-cookie")]);
        assert_eq!(
            credentials(&cookie, query, DEFAULT_COOKIE).token(),
            Some("from-cookie")
        );
        assert_eq!(
            credentials(&HeaderMap::new(), query, DEFAULT_COOKIE).token(),
            Some("from-query")
        );
        assert_eq!(
            credentials(&HeaderMap::new(), Some("channel=x"), DEFAULT_COOKIE),
            Credentials::None
        );
    }

    #[test]
    fn the_cookie_name_is_configurable_and_other_schemes_are_refused() {
        let cookie = headers(&[("cookie", "sseplane_token=a; mine=b")]);
        assert_eq!(credentials(&cookie, None, "mine").token(), Some("b"));
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert!(matches!(
            credentials(&basic, None, DEFAULT_COOKIE),
            Credentials::Malformed(_)
        ));
    }
}

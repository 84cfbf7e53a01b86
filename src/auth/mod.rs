//! Who may subscribe and publish: JWTs verified against the configured keys,
//! whose `sseplane` claim names the channel patterns a holder may subscribe to
//! and publish on (globbed like policies). Policies say which channels need a
//! token; this module says whether a request's token covers them.

pub mod credentials;
pub mod keys;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde::{Deserialize, Serialize};

pub use credentials::{credentials, Credentials};
pub use keys::{KeyRing, KeySource};

use crate::policy::compile::CompiledPattern;
use crate::policy::EffectivePolicy;

/// What a token may do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a stream on it.
    Subscribe,
    /// Publish to it.
    Publish,
}

impl Action {
    /// True when `policy` asks for a token for this action.
    fn required_by(self, policy: &EffectivePolicy) -> bool {
        match self {
            Action::Subscribe => policy.auth.subscribe,
            Action::Publish => policy.auth.publish,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe to",
            Action::Publish => "publish on",
        }
    }
}

/// The `sseplane` claim: channel patterns per action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelClaims {
    /// Patterns of channels the holder may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns of channels the holder may publish on (`*` also allows broadcast).
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The claims sseplane reads; others are ignored. Times are strict numbers: a
/// token whose `exp` is not a number is refused, not treated as eternal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Subject (who the token is for), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The channel rights.
    #[serde(default)]
    pub sseplane: ChannelClaims,
}

/// What a verified token allows.
#[derive(Debug)]
pub struct Grants {
    subscribe: Vec<CompiledPattern>,
    publish: Vec<CompiledPattern>,
    /// When the token stops being accepted (its `exp` plus the leeway).
    pub expires_at: Option<SystemTime>,
    /// Who the token is for (`sub`).
    pub subject: Option<String>,
}

impl Grants {
    /// True when the token allows `action` on `channel`.
    pub fn allows(&self, action: Action, channel: &str) -> bool {
        let patterns = match action {
            Action::Subscribe => &self.subscribe,
            Action::Publish => &self.publish,
        };
        patterns.iter().any(|p| p.is_match(channel))
    }

    /// True when the token may publish on every channel (`"publish": ["*"]`),
    /// which a broadcast needs.
    pub fn allows_broadcast(&self) -> bool {
        self.publish
            .iter()
            .any(|p| p.text.chars().all(|c| c == '*'))
    }

    /// Time left until expiry (`None`: the token does not expire, or not within
    /// [`NEVER_EXPIRES`], which callers can arm a timer for without overflow).
    pub fn time_left(&self) -> Option<Duration> {
        let at = self.expires_at?;
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        (left < NEVER_EXPIRES).then_some(left)
    }
}

/// A token valid for longer than this is treated as never expiring: no timer
/// is armed for it (about a century; `exp` = 2^63−1 is a common "never").
pub const NEVER_EXPIRES: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When a token with `exp` (Unix seconds) stops being accepted: `exp` plus
/// `leeway`; `None` (never) when that instant is beyond what the clock can
/// represent.
fn expiry(exp: u64, leeway: Duration) -> Option<SystemTime> {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))?
        .checked_add(leeway)
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is needed (401).
    #[error("a token is needed to {0}")]
    Missing(String),
    /// A token that does not verify (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token that does not cover the request (403).
    #[error("{0}")]
    Forbidden(String),
}

/// Token settings besides the keys.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(5),
        }
    }
}

/// Verifies tokens and checks what they cover.
#[derive(Clone, Default)]
pub struct Authenticator {
    keys: KeyRing,
    rules: Arc<TokenRules>,
}

impl Authenticator {
    /// With `keys` and `rules`; no key source means auth is off.
    pub fn new(keys: KeyRing, rules: TokenRules) -> Authenticator {
        Authenticator {
            keys,
            rules: Arc::new(rules),
        }
    }

    /// The keys (to watch their files).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// True when a signing key is configured (auth is on).
    pub fn is_enabled(&self) -> bool {
        self.keys.is_configured()
    }

    /// Verifies `token`: signature by a configured key of the token's
    /// algorithm (and `kid`, when both name one), `exp`/`nbf` with the leeway,
    /// `aud`/`iss` when configured, and well-formed channel patterns.
    pub fn verify(&self, token: &str) -> Result<Grants, AuthError> {
        let header = decode_header(token).map_err(|e| {
            AuthError::Invalid(match e.kind() {
                ErrorKind::Json(_) => {
                    "malformed header or an algorithm that is not accepted (\"none\" never is)"
                        .to_owned()
                }
                kind => describe(kind),
            })
        })?;
        let keys = self.keys.keys();
        let mut candidates: Vec<_> = keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if let Some(kid) = &header.kid {
            if candidates.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                candidates.retain(|k| k.kid.as_ref() == Some(kid));
            }
        }
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no configured key verifies {:?} tokens",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        // Bounded: the library adds the leeway to the current time in seconds.
        validation.leeway = self.rules.leeway.as_secs().min(u64::from(u32::MAX));
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        // `exp` is checked below, as RFC 7519 has it: invalid from that second
        // on (the library still accepts a token during its `exp` second).
        validation.validate_exp = false;
        match &self.rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.rules.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let mut last_error = None;
        for key in candidates {
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.grants(data.claims),
                Err(e) => last_error = Some(describe(e.kind())),
            }
        }
        Err(AuthError::Invalid(last_error.unwrap_or_default()))
    }

    fn grants(&self, claims: Claims) -> Result<Grants, AuthError> {
        let expires_at = claims.exp.and_then(|exp| expiry(exp, self.rules.leeway));
        if expires_at.is_some_and(|at| SystemTime::now() >= at) {
            return Err(AuthError::Invalid(describe(&ErrorKind::ExpiredSignature)));
        }
        let compile = |patterns: &[String], field: &str| {
            patterns
                .iter()
                .map(|p| {
                    CompiledPattern::new(p)
                        .map_err(|e| AuthError::Invalid(format!("claim sseplane.{field}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Grants {
            subscribe: compile(&claims.sseplane.subscribe, "subscribe")?,
            publish: compile(&claims.sseplane.publish, "publish")?,
            expires_at,
            subject: claims.sub,
        })
    }

    /// Checks that `token` allows `action` on every channel whose policy asks
    /// for a token for it (`policies[i]` is the policy of `channels[i]`).
    /// `Ok(None)` when nothing needs a token or auth is off; the grants
    /// otherwise (a stream ends when they expire).
    pub fn authorize(
        &self,
        token: Option<&str>,
        action: Action,
        channels: &[impl AsRef<str>],
        policies: &[Arc<EffectivePolicy>],
    ) -> Result<Option<Grants>, AuthError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let mut needing = channels
            .iter()
            .map(AsRef::as_ref)
            .zip(policies)
            .filter(|(_, policy)| action.required_by(policy))
            .map(|(channel, _)| channel)
            .peekable();
        let Some(first) = needing.peek() else {
            return Ok(None);
        };
        let Some(token) = token else {
            return Err(AuthError::Missing(format!(
                "{} channel {first:?}",
                action.verb()
            )));
        };
        let grants = self.verify(token)?;
        if let Some(channel) = needing.find(|c| !grants.allows(action, c)) {
            return Err(AuthError::Forbidden(format!(
                "the token does not allow to {} channel {channel:?}",
                action.verb()
            )));
        }
        Ok(Some(grants))
    }

    /// Checks a broadcast: with auth on, it needs a token that may publish on
    /// every channel (`"publish": ["*"]`).
    pub fn authorize_broadcast(&self, token: Option<&str>) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let token = token.ok_or_else(|| AuthError::Missing("broadcast".to_owned()))?;
        if !self.verify(token)?.allows_broadcast() {
            return Err(AuthError::Forbidden(
                "broadcasting needs a token with \"publish\": [\"*\"]".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A person's words for a verification failure.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "the signature does not verify".to_owned(),
        ErrorKind::InvalidAudience => "the token is for another audience (aud)".to_owned(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's algorithm is not accepted".to_owned()
        }
        ErrorKind::Json(e) => format!("malformed claims: {e}"),
        ErrorKind::Utf8(_) | ErrorKind::Base64(_) | ErrorKind::InvalidToken => {
            "malformed token (expected three base64url parts)".to_owned()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants_until(expires_at: Option<SystemTime>) -> Grants {
        Grants {
            subscribe: vec![],
            publish: vec![],
            expires_at,
            subject: None,
        }
    }

    #[test]
    fn far_future_expiry_saturates_to_never() {
        let leeway = Duration::from_secs(5);
        for exp in [u64::MAX, i64::MAX as u64, i64::MAX as u64 - 4, 1 << 62] {
            let at = expiry(exp, leeway);
            let grants = grants_until(at);
            assert_eq!(grants.time_left(), None, "exp {exp}: never expires");
        }
        let soon = expiry(1_000, Duration::ZERO).unwrap();
        assert_eq!(soon, UNIX_EPOCH + Duration::from_secs(1_000));
        assert_eq!(grants_until(Some(soon)).time_left(), Some(Duration::ZERO));
        let hour = SystemTime::now() + Duration::from_secs(3600);
        let left = grants_until(Some(hour)).time_left().unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    }
}

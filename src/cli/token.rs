//! `sseplane token`: mint a token for a subscriber or a publisher (for trying
//! things out and for scripts; a backend usually signs its own with any JWT
//! library, in the same shape).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use crate::auth::{ChannelClaims, Claims};

/// Arguments of `sseplane token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// HS256 secret (the service's `--jwt-secret`).
    #[arg(
        long,
        env = "SSEPLANE_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "private_key",
        required_unless_present = "private_key"
    )]
    pub secret: Option<String>,
    /// PEM private key (RSA for RS256, EC P-256 for ES256) whose public key the
    /// service has (`--jwt-public-key` or `--jwks`).
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// Signing algorithm with --private-key: RS256 or ES256.
    #[arg(long, default_value = "RS256")]
    pub alg: String,
    /// Key id (`kid`) to put in the header, to pick a key from a JWKS.
    #[arg(long)]
    pub kid: Option<String>,
    /// Channel pattern the holder may subscribe to (repeat for several).
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// Channel pattern the holder may publish on (repeat; `*` allows broadcast).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Lifetime (`exp` = now + ttl); `0s` for a token that never expires.
    #[arg(long, default_value = "1h", value_parser = crate::duration::parse_duration)]
    pub ttl: Duration,
    /// Subject (`sub`): who the token is for.
    #[arg(long)]
    pub sub: Option<String>,
    /// Audience (`aud`).
    #[arg(long)]
    pub aud: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
}

/// Prints the signed token.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(&args)?);
    Ok(())
}

/// Signs a token as `args` describe.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let (algorithm, key) = match (&args.secret, &args.private_key) {
        (Some(secret), _) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        (None, Some(path)) => {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            match args.alg.to_ascii_uppercase().as_str() {
                "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)?),
                "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)?),
                other => anyhow::bail!("--alg {other}: use RS256 or ES256"),
            }
        }
        (None, None) => anyhow::bail!("give --secret or --private-key"),
    };
    let now = crate::event::now_ms() / 1000;
    let claims = Claims {
        exp: (!args.ttl.is_zero()).then(|| now + args.ttl.as_secs().max(1)),
        iat: Some(now),
        nbf: None,
        sub: args.sub.clone(),
        sseplane: ChannelClaims {
            subscribe: args.subscribe.clone(),
            publish: args.publish.clone(),
        },
    };
    let mut value = serde_json::to_value(&claims)?;
    if let Some(aud) = &args.aud {
        value["aud"] = aud.clone().into();
    }
    if let Some(iss) = &args.iss {
        value["iss"] = iss.clone().into();
    }
    let header = Header {
        kid: args.kid.clone(),
        ..Header::new(algorithm)
    };
    Ok(encode(&header, &value, &key)?)
}

//! Verification keys: an HMAC secret, public keys from a PEM file, or a JWKS
//! file. Files are read again when they change (see [`KeyRing::watch`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One key and the algorithms it verifies.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWK `kid`, when the key has one.
    pub kid: Option<String>,
    /// Algorithms this key verifies (never one of another family: a token
    /// signed "HS256" with an RSA public key as secret finds no key).
    pub algorithms: Vec<Algorithm>,
    /// The key itself.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A shared secret for HS256 (and HS384/HS512).
    Secret(Vec<u8>),
    /// A PEM file with an RSA (RS256) or EC (ES256) public key.
    PemFile(PathBuf),
    /// A JWKS file (`{"keys":[…]}`).
    JwksFile(PathBuf),
}

impl KeySource {
    /// The file behind this source, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeySource::Secret(_) => None,
            KeySource::PemFile(p) | KeySource::JwksFile(p) => Some(p),
        }
    }

    /// Reads the keys of this source.
    pub fn load(&self) -> Result<Vec<VerifyKey>, String> {
        match self {
            KeySource::Secret(secret) => {
                if secret.is_empty() {
                    return Err("the JWT secret is empty".to_owned());
                }
                Ok(vec![VerifyKey {
                    kid: None,
                    algorithms: HMAC.to_vec(),
                    key: DecodingKey::from_secret(secret),
                }])
            }
            KeySource::PemFile(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                pem_key(&pem)
                    .map(|k| vec![k])
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            KeySource::JwksFile(path) => {
                let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                jwks_keys(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

/// An RSA or EC public key in PEM.
pub fn pem_key(pem: &[u8]) -> Result<VerifyKey, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(VerifyKey {
            kid: None,
            algorithms: RSA.to_vec(),
            key,
        });
    }
    match DecodingKey::from_ec_pem(pem) {
        Ok(key) => Ok(VerifyKey {
            kid: None,
            algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            key,
        }),
        Err(e) => Err(format!("not an RSA or EC public key in PEM: {e}")),
    }
}

/// The signing keys of a JWKS document; encryption keys are skipped.
pub fn jwks_keys(json: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithms = match jwk.common.key_algorithm {
            Some(declared) => vec![signing_algorithm(declared)
                .ok_or_else(|| format!("key {index}: {declared:?} is not a signing algorithm"))?],
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA.to_vec(),
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return Err(format!("key {index}: unsupported curve")),
                },
                AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {index}: {e}"))?;
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS has no signing key".to_owned());
    }
    Ok(keys)
}

fn signing_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Every configured key, swapped whole when a key file changes.
#[derive(Clone, Default)]
pub struct KeyRing {
    sources: Arc<Vec<KeySource>>,
    keys: Arc<RwLock<Arc<Vec<VerifyKey>>>>,
}

impl KeyRing {
    /// Loads every source; fails if one cannot be read (a bad start is
    /// reported, not run without the keys).
    pub fn load(sources: Vec<KeySource>) -> Result<KeyRing, String> {
        let ring = KeyRing {
            sources: Arc::new(sources),
            keys: Arc::default(),
        };
        let keys = ring.read_all()?;
        *ring.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(ring)
    }

    fn read_all(&self) -> Result<Vec<VerifyKey>, String> {
        let mut keys = Vec::new();
        for source in self.sources.iter() {
            keys.extend(source.load()?);
        }
        Ok(keys)
    }

    /// True when at least one source is configured.
    pub fn is_configured(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The keys now.
    pub fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the key files again whenever one changes. A file that cannot be
    /// read leaves the previous keys in place (and says so in the log).
    pub fn watch(&self) -> Result<(), String> {
        for path in self.sources.iter().filter_map(KeySource::path) {
            let ring = self.clone();
            crate::file_watch::watch(path, move || match ring.read_all() {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "token keys reloaded");
                    *ring.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                }
                Err(e) => {
                    tracing::error!(error = %e, "token keys not reloaded; keeping the previous keys")
                }
            })?;
        }
        Ok(())
    }
}

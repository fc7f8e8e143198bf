//! Tokens: checking them ([`Verifier`]), minting them with a shared secret
//! ([`Minter`]), and the token a service sends to the others
//! ([`ServiceToken`], [`WithToken`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{AuthConfig, METADATA_KEY, Principal, Role};

/// The shortest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the
/// hash's size).
pub const MIN_SECRET_LEN: usize = 32;
const MAX_SUBJECT_LEN: usize = 256;

/// Why a token, a key or the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth: {0}")]
    Config(String),
    #[error("{0}")]
    Token(String),
}

/// What a token says, as [`Minter`] writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// What a checked token must name (the registered claims are checked by
/// the validation itself, whatever shape `aud` has).
#[derive(Deserialize)]
struct Named {
    sub: String,
    role: Role,
}

/// Checks tokens against the configured keys.
pub struct Verifier {
    /// Each key with the validation that pins its one algorithm.
    keys: Vec<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn validation(alg: Algorithm, cfg: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&cfg.issuer]);
    v.set_audience(&[&cfg.audience]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = cfg.leeway_secs;
    v
}

fn secret_of(cfg: &AuthConfig) -> Result<&[u8], AuthError> {
    let secret = cfg.hs256_secret.as_bytes();
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthError::Config(format!(
            "hs256_secret: at least {MIN_SECRET_LEN} bytes, got {}",
            secret.len()
        )));
    }
    Ok(secret)
}

impl Verifier {
    /// The verifier `cfg` describes; `None` when authentication is off.
    ///
    /// # Errors
    /// Nothing configured, a short secret, an unreadable or malformed key
    /// file, an unknown algorithm: each named.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, AuthError> {
        if cfg.disabled {
            return Ok(None);
        }
        if !cfg.is_configured() {
            return Err(AuthError::Config(
                "no way to check tokens: set auth.hs256_secret (development), \
                 auth.public_key_files (production), or auth.disabled = true \
                 (behind a proxy that authenticates); `sagactl up` sets a \
                 development secret itself"
                    .into(),
            ));
        }
        let mut keys = Vec::new();
        if !cfg.hs256_secret.is_empty() {
            keys.push((
                DecodingKey::from_secret(secret_of(cfg)?),
                validation(Algorithm::HS256, cfg),
            ));
        }
        if !cfg.public_key_files.is_empty() {
            let alg = match cfg.public_key_algorithm.as_str() {
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(AuthError::Config(format!(
                        "public_key_algorithm: {other:?} is not one of RS256, ES256, EdDSA"
                    )));
                }
            };
            for file in &cfg.public_key_files {
                let pem = std::fs::read(file).map_err(|e| {
                    AuthError::Config(format!("public_key_files: {}: {e}", file.display()))
                })?;
                let key = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| {
                    AuthError::Config(format!(
                        "public_key_files: {}: not a {} public key: {e}",
                        file.display(),
                        cfg.public_key_algorithm
                    ))
                })?;
                keys.push((key, validation(alg, cfg)));
            }
        }
        Ok(Some(Self { keys }))
    }

    /// The caller a token names, once its algorithm, signature, time window,
    /// issuer and audience check out.
    ///
    /// # Errors
    /// Why the token is refused, in words fit for the caller.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Token(format!("malformed token: {e}")))?;
        let mut last = None;
        for (key, validation) in &self.keys {
            if !validation.algorithms.contains(&header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<Named>(token, key, validation) {
                Ok(data) => {
                    let Named { sub, role } = data.claims;
                    if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN {
                        return Err(AuthError::Token(format!(
                            "sub: 1..={MAX_SUBJECT_LEN} characters, got {}",
                            sub.len()
                        )));
                    }
                    return Ok(Principal { subject: sub, role });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(AuthError::Token(match last {
            None => format!("algorithm {:?} is not accepted here", header.alg),
            Some(e) => match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".into(),
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
                ErrorKind::InvalidSignature => "bad signature".into(),
                ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
                ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("claim {c:?} missing"),
                _ => format!("invalid token: {e}"),
            },
        }))
    }
}

/// Mints HS256 tokens with a shared secret.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for the tokens `cfg` accepts by its secret.
    ///
    /// # Errors
    /// No secret, or one shorter than [`MIN_SECRET_LEN`].
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthError> {
        if cfg.hs256_secret.is_empty() {
            return Err(AuthError::Config(
                "hs256_secret: not set, so no token can be minted here".into(),
            ));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret_of(cfg)?),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// A token for `subject` as `role`, valid from now for `ttl`.
    ///
    /// # Errors
    /// An empty or overlong subject.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, AuthError> {
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Err(AuthError::Token(format!(
                "subject: 1..={MAX_SUBJECT_LEN} characters, got {}",
                subject.len()
            )));
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| AuthError::Token(format!("cannot sign: {e}")))
    }
}

/// A fresh secret for development: 32 random bytes as 64 hex digits.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of `authorization: Bearer <token>`.
///
/// # Errors
/// The entry is missing, not ASCII, or not a bearer token.
pub fn bearer(value: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    let value = value.ok_or_else(|| {
        AuthError::Token(format!(
            "no credentials: send {METADATA_KEY}: Bearer <token>"
        ))
    })?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Token(format!("{METADATA_KEY}: not printable ASCII")))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Token(format!(
            "{METADATA_KEY}: expected \"Bearer <token>\""
        ))),
    }
}

const MINTED_TTL: Duration = Duration::from_secs(3600);
const REMINT_AFTER: Duration = Duration::from_secs(1800);
const REREAD_AFTER: Duration = Duration::from_secs(60);

enum Source {
    None,
    Fixed(String),
    Mint(Minter, String),
    File(PathBuf),
}

/// The token a caller sends: none, a fixed one, one minted (and minted
/// again well before it expires), or one read from a file (and read again
/// every minute, so it can be rotated).
pub struct ServiceToken {
    source: Source,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::None => "none",
            Source::Fixed(_) => "fixed",
            Source::Mint(..) => "minted",
            Source::File(_) => "file",
        };
        f.debug_struct("ServiceToken")
            .field("source", &source)
            .finish()
    }
}

impl ServiceToken {
    /// No token (for a service with authentication off).
    pub fn none() -> Self {
        Self::of(Source::None)
    }

    /// Always `token`.
    pub fn fixed(token: impl Into<String>) -> Self {
        Self::of(Source::Fixed(token.into()))
    }

    fn of(source: Source) -> Self {
        Self {
            source,
            cached: Mutex::new(None),
        }
    }

    /// The token `service` sends to the others, as `cfg` provides it.
    ///
    /// # Errors
    /// Authentication on with neither a token file nor a secret to mint
    /// one.
    pub fn from_config(service: &str, cfg: &AuthConfig) -> Result<Self, AuthError> {
        if let Some(file) = &cfg.service_token_file {
            return Ok(Self::of(Source::File(file.clone())));
        }
        if cfg.disabled {
            return Ok(Self::none());
        }
        if cfg.hs256_secret.is_empty() {
            return Err(AuthError::Config(
                "service_token_file: needed to call the other services when tokens \
                 are checked with public keys (no secret to mint one here)"
                    .into(),
            ));
        }
        Ok(Self::of(Source::Mint(
            Minter::from_config(cfg)?,
            service.to_owned(),
        )))
    }

    /// The token to send now, if any.
    ///
    /// # Errors
    /// The token file cannot be read, or a token cannot be minted.
    pub fn current(&self) -> Result<Option<String>, AuthError> {
        let fresh_for = match &self.source {
            Source::None => return Ok(None),
            Source::Fixed(t) => return Ok(Some(t.clone())),
            Source::Mint(..) => REMINT_AFTER,
            Source::File(_) => REREAD_AFTER,
        };
        let mut cached = self.cached.lock().expect("service token lock poisoned");
        if let Some((token, at)) = cached.as_ref()
            && at.elapsed() < fresh_for
        {
            return Ok(Some(token.clone()));
        }
        let token = match &self.source {
            Source::Mint(minter, service) => minter.mint(service, Role::Service, MINTED_TTL)?,
            Source::File(file) => match read_token_file(file) {
                Ok(token) => token,
                // Caught mid-rewrite (or briefly gone): the last token read
                // is sent until the file has one again.
                // It is read again a second later, not at every call.
                Err(e) => match cached.as_mut() {
                    Some((last, at)) => {
                        tracing::warn!(error = %e, "service token file unreadable; sending the last token read");
                        *at = Instant::now()
                            .checked_sub(REREAD_AFTER.saturating_sub(Duration::from_secs(1)))
                            .unwrap_or_else(Instant::now);
                        return Ok(Some(last.clone()));
                    }
                    None => return Err(e),
                },
            },
            Source::None | Source::Fixed(_) => unreachable!("answered above"),
        };
        *cached = Some((token.clone(), Instant::now()));
        Ok(Some(token))
    }
}

/// The token in `file`, which must hold one.
fn read_token_file(file: &std::path::Path) -> Result<String, AuthError> {
    let error =
        |why: String| AuthError::Config(format!("service_token_file: {}: {why}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    match text.trim() {
        "" => Err(error("is empty".into())),
        token => Ok(token.to_owned()),
    }
}

/// The interceptor of an outgoing client: the current trace context, and
/// the token of its [`ServiceToken`] as a bearer token.
#[derive(Clone, Debug)]
pub struct WithToken(pub Arc<ServiceToken>);

impl WithToken {
    /// An interceptor that sends no token.
    pub fn none() -> Self {
        Self(Arc::new(ServiceToken::none()))
    }
}

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = crate::telemetry::propagate_trace(request)?;
        let token = self.0.current().map_err(|e| {
            tracing::error!(error = %e, "no token for an outgoing call");
            tonic::Status::unauthenticated(format!("this caller has no token: {e}"))
        })?;
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::unauthenticated("the token is not printable ASCII"))?;
            request.metadata_mut().insert(METADATA_KEY, value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair made for these tests only (openssl genpkey -algorithm ed25519).
    const TEST_ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIExoPPuHI/9mOk4aO5QsM5zZhSNYYBvtvG0FsJMudFCZ\n-----END PRIVATE KEY-----\n";
    const TEST_ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA2iJYOReXGwPuzh+/gNMjjAbyLJ9ModBYWByRzmINOuw=\n-----END PUBLIC KEY-----\n";

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    #[test]
    fn a_minted_token_names_its_caller() {
        let cfg = AuthConfig::with_secret(&random_secret());
        let token = Minter::from_config(&cfg)
            .unwrap()
            .mint("c1", Role::Customer, hour())
            .unwrap();
        let verifier = Verifier::from_config(&cfg).unwrap().unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap(),
            Principal {
                subject: "c1".into(),
                role: Role::Customer
            }
        );
    }

    #[test]
    fn no_key_a_short_secret_and_a_bad_algorithm_are_refused_by_name() {
        let none = Verifier::from_config(&AuthConfig::default()).unwrap_err();
        assert!(none.to_string().contains("auth.hs256_secret"), "{none}");
        let short = Verifier::from_config(&AuthConfig::with_secret("short")).unwrap_err();
        assert!(short.to_string().contains("at least 32 bytes"), "{short}");
        let alg = Verifier::from_config(&AuthConfig {
            public_key_files: vec!["/nonexistent".into()],
            public_key_algorithm: "none".into(),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(alg.to_string().contains("public_key_algorithm"), "{alg}");
        assert!(
            Verifier::from_config(&AuthConfig {
                disabled: true,
                ..AuthConfig::default()
            })
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn public_keys_accept_their_signatures_and_refuse_an_hmac_made_with_the_public_key() {
        let dir = std::env::temp_dir().join(format!("auth-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("ed25519.pub.pem");
        std::fs::write(&public, TEST_ED25519_PUBLIC).unwrap();
        let cfg = AuthConfig {
            public_key_files: vec![public],
            public_key_algorithm: "EdDSA".into(),
            ..AuthConfig::default()
        };
        let verifier = Verifier::from_config(&cfg).unwrap().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "ops".into(),
            role: Role::Admin,
            iss: "saga".into(),
            aud: "saga".into(),
            iat: now,
            nbf: now,
            exp: now + 600,
        };
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(TEST_ED25519_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(verifier.verify(&signed).unwrap().role, Role::Admin);
        // The classic confusion: HS256 keyed with the (public) key's text.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(TEST_ED25519_PUBLIC.as_bytes()),
        )
        .unwrap();
        let refused = verifier.verify(&forged).unwrap_err();
        assert!(refused.to_string().contains("not accepted"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_bearer_credentials_are_read() {
        let value = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&value("Bearer abc"))).unwrap(), "abc");
        assert_eq!(bearer(Some(&value("bearer  abc "))).unwrap(), "abc");
        assert!(bearer(None).is_err());
        assert!(bearer(Some(&value("Basic YTpi"))).is_err());
        assert!(bearer(Some(&value("Bearer "))).is_err());
    }

    #[test]
    fn a_service_mints_its_own_token_and_reuses_it() {
        let cfg = AuthConfig::with_secret(&random_secret());
        let token = ServiceToken::from_config("order-svc", &cfg).unwrap();
        let first = token.current().unwrap().unwrap();
        assert_eq!(token.current().unwrap().unwrap(), first);
        let who = Verifier::from_config(&cfg)
            .unwrap()
            .unwrap()
            .verify(&first)
            .unwrap();
        assert_eq!(
            (who.subject.as_str(), who.role),
            ("order-svc", Role::Service)
        );
        let public_only = AuthConfig {
            public_key_files: vec!["k.pem".into()],
            ..AuthConfig::default()
        };
        let err = ServiceToken::from_config("order-svc", &public_only).unwrap_err();
        assert!(err.to_string().contains("service_token_file"), "{err}");
    }

    /// A token file caught empty or missing mid-rewrite (a rotation that
    /// truncates, then writes) does not stop the service's calls: the last
    /// token read goes on being sent until the file has one again. An empty
    /// read used to be cached, and sent, for a minute.
    #[test]
    fn a_token_file_caught_mid_rewrite_keeps_the_last_token() {
        let dir = std::env::temp_dir().join(format!("token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let cfg = AuthConfig {
            service_token_file: Some(file.clone()),
            ..AuthConfig::default()
        };
        let token = ServiceToken::from_config("order-svc", &cfg).unwrap();
        let stale = || {
            let mut cached = token.cached.lock().unwrap();
            if let Some((_, at)) = cached.as_mut() {
                *at = Instant::now().checked_sub(REREAD_AFTER * 2).unwrap();
            }
        };
        // Nothing read yet: an empty or missing file is an error naming it.
        std::fs::write(&file, "").unwrap();
        let empty = token.current().unwrap_err().to_string();
        assert!(
            empty.contains("service_token_file") && empty.contains("empty"),
            "{empty}"
        );
        std::fs::write(&file, "tok-1\n").unwrap();
        assert_eq!(token.current().unwrap().as_deref(), Some("tok-1"));
        for mid_rewrite in [Some(""), Some("  \n"), None] {
            match mid_rewrite {
                Some(text) => std::fs::write(&file, text).unwrap(),
                None => std::fs::remove_file(&file).unwrap(),
            }
            stale();
            assert_eq!(
                token.current().unwrap().as_deref(),
                Some("tok-1"),
                "{mid_rewrite:?}"
            );
        }
        std::fs::write(&file, "tok-2").unwrap();
        stale();
        assert_eq!(token.current().unwrap().as_deref(), Some("tok-2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

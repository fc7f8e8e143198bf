//! The `auth` section of every service's settings.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How callers are authenticated. With nothing set a service refuses to
/// start and says what to set: there is no default key, and no setting that
/// accepts unsigned tokens. `sagactl up` sets a development secret of its
/// own (see the README).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// No authentication: every call is an admin's. Only behind something
    /// that authenticates for it; a warning is logged at start.
    pub disabled: bool,
    /// A shared secret (at least 32 bytes) for HS256 tokens: whoever knows
    /// it can mint any token, so it suits development and a single trust
    /// domain. Never printed.
    pub hs256_secret: String,
    /// Files holding PEM public keys (SubjectPublicKeyInfo); a token signed
    /// by any of their private keys with `public_key_algorithm` is accepted.
    pub public_key_files: Vec<PathBuf>,
    /// The one algorithm public-key tokens must use: `RS256`, `ES256` or
    /// `EdDSA`.
    pub public_key_algorithm: String,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// A file holding the token this service sends when it calls another
    /// (order-svc's catalog checks, the participants' repair), read again
    /// every minute so it can be rotated. Without it the service mints its
    /// own from `hs256_secret`.
    pub service_token_file: Option<PathBuf>,
    /// Calls a second each customer may make (0: no limit); more are
    /// answered RESOURCE_EXHAUSTED.
    pub customer_rate_per_sec: u32,
    /// Calls a customer may make at once beyond that rate.
    pub customer_burst: u32,
    /// The same for each admin (default: no limit).
    pub admin_rate_per_sec: u32,
    pub admin_burst: u32,
    /// The same for each service (default: no limit).
    pub service_rate_per_sec: u32,
    pub service_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            hs256_secret: String::new(),
            public_key_files: Vec::new(),
            public_key_algorithm: "RS256".into(),
            issuer: "saga".into(),
            audience: "saga".into(),
            leeway_secs: 30,
            service_token_file: None,
            customer_rate_per_sec: 50,
            customer_burst: 100,
            admin_rate_per_sec: 0,
            admin_burst: 0,
            service_rate_per_sec: 0,
            service_burst: 0,
        }
    }
}

impl AuthConfig {
    /// A configuration that accepts tokens signed with `secret`.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            hs256_secret: secret.to_owned(),
            ..Self::default()
        }
    }

    /// Whether any way of checking tokens (or none at all) was chosen.
    pub fn is_configured(&self) -> bool {
        self.disabled || !self.hs256_secret.is_empty() || !self.public_key_files.is_empty()
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.hs256_secret.is_empty() {
            ""
        } else {
            "(set, not shown)"
        };
        f.debug_struct("AuthConfig")
            .field("disabled", &self.disabled)
            .field("hs256_secret", &secret)
            .field("public_key_files", &self.public_key_files)
            .field("public_key_algorithm", &self.public_key_algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("service_token_file", &self.service_token_file)
            .field("customer_rate_per_sec", &self.customer_rate_per_sec)
            .field("customer_burst", &self.customer_burst)
            .field("admin_rate_per_sec", &self.admin_rate_per_sec)
            .field("admin_burst", &self.admin_burst)
            .field("service_rate_per_sec", &self.service_rate_per_sec)
            .field("service_burst", &self.service_burst)
            .finish()
    }
}

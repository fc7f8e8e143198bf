//! Who is calling, and what they may do.
//!
//! Every gRPC call but health and reflection carries a bearer token (a JWT in
//! the `authorization` metadata entry). One tower layer ([`AuthLayer`]) checks
//! it before any service sees the call: a pinned algorithm, the signature,
//! `exp`/`nbf`, `aud` and `iss`; then the rule of the method ([`policy`])
//! against the role the token carries. A call that passes reaches its handler
//! with the caller's [`Principal`] in the request's extensions; the handler
//! checks ownership (a customer's own orders, wallet and payments) with
//! [`Principal::may_act_for`].
//!
//! - Missing or bad credentials: `UNAUTHENTICATED`.
//! - A role the method does not allow: `PERMISSION_DENIED`.
//! - Another customer's order or payment: `NOT_FOUND`, as if it did not exist.
//!
//! Keys come from [`AuthConfig`]: an HS256 secret shared with whoever mints
//! tokens (development, `sagactl up`), or PEM public keys whose private halves
//! stay with the issuer (production). No setting accepts an unsigned token.

mod config;
mod layer;
mod limit;
pub mod policy;
mod token;

pub use config::AuthConfig;
pub use layer::{AuthLayer, AuthService};
pub use limit::Limits;
pub use token::{
    AuthError, Claims, MIN_SECRET_LEN, Minter, ServiceToken, Verifier, WithToken, bearer,
    random_secret,
};

use serde::{Deserialize, Serialize};

/// The metadata entry that carries the token.
pub const METADATA_KEY: &str = "authorization";

/// What a token lets its holder be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// A customer: the token's subject is its customer id. It places, sees
    /// and cancels its own orders, and sees its own wallet and payments.
    Customer,
    /// An operator: every call.
    Admin,
    /// Another service: the reads and direct reservations services make of
    /// each other (order-svc's catalog checks, the participants' repair).
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The caller of one request, as its token names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: a customer id, an operator's or a service's name.
    pub subject: String,
    pub role: Role,
}

impl Principal {
    /// The caller a service with authentication off sees: an admin.
    pub fn unauthenticated_admin() -> Self {
        Self {
            subject: "anonymous (authentication off)".into(),
            role: Role::Admin,
        }
    }

    /// Whether it may act on the records of `customer_id`: an admin for
    /// anyone, a customer for itself.
    pub fn may_act_for(&self, customer_id: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Customer => self.subject == customer_id,
            Role::Service => false,
        }
    }

    /// The customer it is, if it is one.
    pub fn customer(&self) -> Option<&str> {
        (self.role == Role::Customer).then_some(self.subject.as_str())
    }

    /// What scopes its idempotency keys: two callers' keys never meet.
    pub fn key_scope(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.subject)
    }
}

/// The caller of `request`, put there by [`AuthLayer`]. A request that did
/// not pass through the layer has none: `UNAUTHENTICATED`, so a service
/// wired without the layer refuses rather than trusts.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no credentials were checked"))
}

/// `PERMISSION_DENIED` for a customer acting for another one.
pub fn not_yours(field: &str) -> tonic::Status {
    tonic::Status::permission_denied(format!(
        "{field}: a customer may act only for itself (the token's subject)"
    ))
}

//! The tower layer in front of every service's gRPC routes: it checks the
//! caller's token and the method's rule, and hands the caller to the
//! handler in the request's extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;

use super::limit::Limits;
use super::policy::{self, Rule};
use super::{METADATA_KEY, Principal, Verifier, bearer};

/// Checks every call (see the module). Without a verifier (authentication
/// off) every caller is an admin.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Option<Arc<Verifier>>,
    limits: Arc<Limits>,
}

impl AuthLayer {
    pub fn new(verifier: Option<Verifier>, limits: Limits) -> Self {
        Self {
            verifier: verifier.map(Arc::new),
            limits: Arc::new(limits),
        }
    }

    /// The caller of a call to `path` with these headers, or the status that
    /// refuses it. `Ok(None)` for an open method.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Principal>, Status> {
        let rule = policy::rule(path);
        if rule == Some(Rule::Open) {
            return Ok(None);
        }
        let principal = match &self.verifier {
            None => Principal::unauthenticated_admin(),
            Some(verifier) => {
                let token = bearer(headers.get(METADATA_KEY))
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                verifier
                    .verify(token)
                    .map_err(|e| Status::unauthenticated(e.to_string()))?
            }
        };
        match rule {
            Some(rule) if rule.allows(principal.role) => {
                self.limits.check(&principal)?;
                Ok(Some(principal))
            }
            Some(_) => Err(Status::permission_denied(format!(
                "{path}: not allowed to a {} (see the README's access matrix)",
                principal.role.as_str()
            ))),
            None => Err(Status::permission_denied(format!(
                "{path}: no access rule, so no caller may use it"
            ))),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            layer: self.clone(),
            inner,
        }
    }
}

/// [`AuthLayer`] around a service.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    layer: AuthLayer,
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.layer.check(request.uri().path(), request.headers()) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                // The clone is the one that was made ready.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { ready.call(request).await })
            }
            Err(status) => {
                tracing::debug!(
                    method = request.uri().path(),
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused"
                );
                metrics::counter!("auth_refused_total", "code" => format!("{:?}", status.code()))
                    .increment(1);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

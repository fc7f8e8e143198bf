//! `saga-shared`: what every saga service uses the same way.
//!
//! - [`proto`]: code generated from `proto/` (events and the four gRPC APIs).
//! - [`config`]: typed settings (defaults, optional TOML file, environment).
//! - [`db`]: Postgres pools, one schema per service, migrations.
//! - [`bus`]: the JetStream bus: namespaced streams, event envelope, the
//!   transactional [`bus::outbox`] and its relay, durable pull
//!   [`bus::consumer`]s with an inbox (`processed_events`) and a DLQ.
//! - [`nats`]: NATS connections with their credentials and TLS.
//! - [`idempotency`]: durable `idempotency-key` handling for mutating gRPC calls.
//! - [`telemetry`]: JSON logs, OpenTelemetry (OTLP off unless configured) and
//!   W3C trace context across gRPC metadata and event headers.
//! - [`grpc`], [`admin`]: the gRPC server (health, reflection, tracing) and the
//!   admin HTTP port (`/healthz`, `/readyz`, `/metrics`).
//! - [`runtime`]: [`runtime::Platform`] wires the above for one service and
//!   runs it until a shutdown future resolves; [`service`]: the settings
//!   sections every service has ([`service_config!`]) and the [`service::Service`]
//!   trait that connects, assembles, runs and starts one.
//! - [`validate`]: field-named validation errors for requests; [`codec`]:
//!   the gRPC codec, which names the field of a request that does not decode.
//! - [`auth`]: bearer tokens checked for every gRPC call, the roles they
//!   carry and the rule of every method.
//! - [`backoff`]: the one exponential backoff of every retry loop.
//! - [`faults`]: crash points for drills and tests (off unless armed).
//! - [`repair`]: the participants' repair loop, which finishes the records
//!   of sagas that ended while their events could not be applied.

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod bus;
pub mod codec;
pub mod config;
pub mod db;
pub mod faults;
pub mod grpc;
pub mod idempotency;
pub mod nats;
pub mod proto;
pub mod redis;
pub mod repair;
pub mod runtime;
pub mod service;
pub mod telemetry;
pub mod time;
pub mod validate;

/// A boxed error for causes that cross a layer without being inspected.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

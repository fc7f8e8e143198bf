//! Settings of the payment service. Environment prefix: `PAYMENT_SVC__`
//! (e.g. `PAYMENT_SVC__GATEWAY__DECLINE_RATE=0.1`); an optional TOML file is
//! named by `PAYMENT_SVC_CONFIG`. The sections every service has come from
//! [`saga_shared::service_config!`].

use saga_shared::config::{ConfigError, RepairConfig};
use saga_shared::service::Check;
use serde::{Deserialize, Serialize};

saga_shared::service_config! {
    pub struct PaymentConfig {
        service: "payment-svc",
        env_prefix: "PAYMENT_SVC__",
        file_var: "PAYMENT_SVC_CONFIG",
        own_stream: Payments,
        schema: "payment",
        grpc_port: 50053,
        admin_port: 9093,
        pub gateway: GatewayConfig,
        /// Finishing what sagas that ended left open here, when their events
        /// could not be applied.
        pub repair: RepairConfig,
    }
}

impl Check for PaymentConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.gateway.decline_rate) {
            return Err(ConfigError::Invalid {
                field: "gateway.decline_rate".into(),
                message: format!(
                    "must be within 0.0..=1.0, got {}",
                    self.gateway.decline_rate
                ),
            });
        }
        Ok(())
    }
}

/// The simulated card gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Fraction of authorizations declined, 0.0..=1.0.
    pub decline_rate: f64,
    /// Time an authorization takes, in milliseconds.
    pub latency_ms: u64,
    /// Up to this much more, in milliseconds (drawn per order).
    pub jitter_ms: u64,
    /// Seed of the decisions: the same seed and order id give the same answer.
    pub seed: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            decline_rate: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            seed: 0,
        }
    }
}

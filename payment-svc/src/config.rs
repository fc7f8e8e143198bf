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

/// The longest the simulated gateway may take to authorize (latency and
/// jitter together): an hour.
const GATEWAY_WAIT_MAX_MS: u64 = 3_600_000;

impl Check for PaymentConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        if g.latency_ms.saturating_add(g.jitter_ms) > GATEWAY_WAIT_MAX_MS {
            // The setting that is too long on its own, else the one that
            // takes the sum past the bound.
            let field = if g.latency_ms > GATEWAY_WAIT_MAX_MS {
                "gateway.latency_ms"
            } else {
                "gateway.jitter_ms"
            };
            return Err(ConfigError::Invalid {
                field: field.into(),
                message: format!(
                    "latency_ms + jitter_ms must be at most {GATEWAY_WAIT_MAX_MS} (an hour), \
                     got {} + {}",
                    g.latency_ms, g.jitter_ms
                ),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_gateway(tweak: impl FnOnce(&mut GatewayConfig)) -> PaymentConfig {
        let mut cfg = PaymentConfig::default();
        tweak(&mut cfg.gateway);
        cfg
    }

    /// A wait the gateway cannot take is refused at startup, naming the
    /// setting: it used to overflow in the first charge's prepare (a panic,
    /// the event redelivered for ever).
    #[test]
    fn a_gateway_wait_beyond_an_hour_is_refused_by_name() {
        for (field, cfg) in [
            (
                "gateway.latency_ms",
                with_gateway(|g| g.latency_ms = u64::MAX),
            ),
            (
                "gateway.jitter_ms",
                with_gateway(|g| g.jitter_ms = u64::MAX),
            ),
            (
                "gateway.jitter_ms",
                with_gateway(|g| {
                    g.latency_ms = 3_000_000;
                    g.jitter_ms = 1_000_000;
                }),
            ),
        ] {
            match cfg.check() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(
            with_gateway(|g| {
                g.latency_ms = 1_000;
                g.jitter_ms = 500;
            })
            .check()
            .is_ok()
        );
    }
}

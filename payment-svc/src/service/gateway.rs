//! The simulated card gateway: a configurable decline rate and latency,
//! deterministic under a seed (the same order always gets the same answer,
//! so a redelivered event decides as the first delivery did).

use std::time::Duration;

use uuid::Uuid;

use crate::config::GatewayConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    Approved,
    Declined,
}

#[derive(Clone, Debug)]
pub struct Gateway {
    cfg: GatewayConfig,
}

/// SplitMix64: a small, well-mixed hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Gateway {
    pub fn new(cfg: GatewayConfig) -> Self {
        Self { cfg }
    }

    fn draw(&self, order: Uuid, salt: u64) -> u64 {
        let (hi, lo) = order.as_u64_pair();
        mix(mix(mix(self.cfg.seed ^ salt) ^ hi) ^ lo)
    }

    /// The decision for `order`, without the wait.
    pub fn decide(&self, order: Uuid) -> Authorization {
        let unit = (self.draw(order, 1) >> 11) as f64 / (1u64 << 53) as f64;
        if unit < self.cfg.decline_rate {
            Authorization::Declined
        } else {
            Authorization::Approved
        }
    }

    /// Authorizes a charge for `order`, taking the configured time.
    pub async fn authorize(&self, order: Uuid) -> Authorization {
        let jitter = if self.cfg.jitter_ms == 0 {
            0
        } else {
            self.draw(order, 2) % (self.cfg.jitter_ms + 1)
        };
        let wait = Duration::from_millis(self.cfg.latency_ms + jitter);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.decide(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(rate: f64, seed: u64) -> Gateway {
        Gateway::new(GatewayConfig {
            decline_rate: rate,
            seed,
            ..GatewayConfig::default()
        })
    }

    #[test]
    fn decisions_are_deterministic_and_follow_the_rate() {
        let g = gateway(0.3, 7);
        let orders: Vec<Uuid> = (0..10_000).map(|_| Uuid::new_v4()).collect();
        let declined = orders
            .iter()
            .filter(|o| g.decide(**o) == Authorization::Declined)
            .count();
        assert!(
            (2_700..3_300).contains(&declined),
            "declined {declined} of 10000"
        );
        for o in &orders[..100] {
            assert_eq!(g.decide(*o), gateway(0.3, 7).decide(*o));
        }
        assert!(
            orders
                .iter()
                .all(|o| gateway(0.0, 1).decide(*o) == Authorization::Approved)
        );
        assert!(
            orders
                .iter()
                .all(|o| gateway(1.0, 1).decide(*o) == Authorization::Declined)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn authorization_takes_the_configured_time() {
        let g = Gateway::new(GatewayConfig {
            latency_ms: 250,
            ..GatewayConfig::default()
        });
        let start = tokio::time::Instant::now();
        g.authorize(Uuid::new_v4()).await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }
}

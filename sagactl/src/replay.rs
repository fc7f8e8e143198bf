//! Replay from JetStream (issue 9), first part: where each service stands on
//! each of its input streams ([`status`], `sagactl replay status`): the
//! checkpoint up to which every message is accounted for, and the first
//! message that holds it back.

use anyhow::Context;
use saga_shared::bus::checkpoint::{self, Checkpoint};
use saga_shared::bus::{EventType, Namespace, StreamKind};
use sqlx::migrate::Migrator;

use crate::system::SystemConfig;

/// What replay needs to know of one service.
pub struct Consumes {
    /// The service, which is also its durables' and inbox rows' name.
    pub service: &'static str,
    pub input: &'static [StreamKind],
    pub wants: &'static [EventType],
}

/// The four services' inputs.
pub const SERVICES: [Consumes; 4] = [
    Consumes {
        service: "order-svc",
        input: order_svc::events::INPUT,
        wants: order_svc::events::WANTS,
    },
    Consumes {
        service: "inventory-svc",
        input: inventory_svc::events::INPUT,
        wants: inventory_svc::events::WANTS,
    },
    Consumes {
        service: "payment-svc",
        input: payment_svc::events::INPUT,
        wants: payment_svc::events::WANTS,
    },
    Consumes {
        service: "reservation-svc",
        input: reservation_svc::events::INPUT,
        wants: reservation_svc::events::WANTS,
    },
];

/// The service named `name` (`payment` or `payment-svc`).
pub fn service(name: &str) -> anyhow::Result<&'static Consumes> {
    let full = if name.ends_with("-svc") {
        name.to_owned()
    } else {
        format!("{name}-svc")
    };
    SERVICES
        .iter()
        .find(|c| c.service == full)
        .with_context(|| {
            format!("unknown service {name:?}: one of order, inventory, payment, reservation")
        })
}

/// Advances and returns the checkpoints of `only` (or every service) on
/// each of their input streams.
pub async fn status(cfg: &SystemConfig, only: Option<&str>) -> anyhow::Result<Vec<Checkpoint>> {
    let chosen: Vec<&Consumes> = match only {
        Some(name) => vec![service(name)?],
        None => SERVICES.iter().collect(),
    };
    let nats = async_nats::connect(cfg.order.nats.url.as_str())
        .await
        .context("NATS")?;
    let js = async_nats::jetstream::new(nats);
    let ns = Namespace::new(&cfg.order.namespace)?;
    let mut out = Vec::new();
    for c in chosen {
        let (database, migrations): (_, &Migrator) = match c.service {
            "order-svc" => (&cfg.order.database, &order_svc::MIGRATIONS),
            "inventory-svc" => (&cfg.inventory.database, &inventory_svc::MIGRATIONS),
            "payment-svc" => (&cfg.payment.database, &payment_svc::MIGRATIONS),
            _ => (&cfg.reservation.database, &reservation_svc::MIGRATIONS),
        };
        let pool = saga_shared::db::connect(database, migrations)
            .await
            .with_context(|| format!("{}'s database", c.service))?;
        for kind in c.input {
            let wants = |t: EventType| c.wants.contains(&t);
            out.push(checkpoint::advance(&pool, &js, &ns, c.service, *kind, wants).await?);
        }
        pool.close().await;
    }
    Ok(out)
}

/// The checkpoints as a table.
pub fn render(checkpoints: &[Checkpoint]) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:>10} {:>10} {:>8}  held back by\n",
        "service", "stream", "checkpoint", "last seq", "behind"
    );
    for c in checkpoints {
        let held = c.gap.as_ref().map_or_else(String::new, |g| {
            format!(
                "seq {} ({}, event {})",
                g.seq,
                g.event_type,
                g.event_id
                    .map_or_else(|| "without an id".to_owned(), |id| id.to_string())
            )
        });
        out.push_str(&format!(
            "{:<16} {:<22} {:>10} {:>10} {:>8}  {held}\n",
            c.consumer,
            c.stream,
            c.seq,
            c.stream_last,
            c.stream_last.saturating_sub(c.seq)
        ));
    }
    out
}

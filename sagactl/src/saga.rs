//! A saga's story and the sagas that wait: `sagactl saga show <order id>`
//! (every event of the order across the four services, with producer,
//! times, stream position, cause and delays, and each participant's record)
//! and `sagactl saga stuck` (open orders whose next step is overdue, with
//! the participant that owes it and how its consumer stands).
//!
//! Events are read from the services' outboxes (each event a service
//! published, under the id the stream carries) and inboxes (each event a
//! service applied, with its stream position), found by the order's id.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, TimeDelta, Utc};
use saga_shared::bus::history::{self, Published, Step};
use saga_shared::bus::{EventType, Namespace, StreamKind};
use uuid::Uuid;

use crate::audit::{Auditor, OrderFacts};

/// An order's story.
#[derive(Clone, Debug)]
pub struct Story {
    pub order: OrderFacts,
    pub steps: Vec<Step>,
}

/// The story of `id` (None: order-svc does not know the order).
pub async fn show(auditor: &Auditor, id: Uuid) -> anyhow::Result<Option<Story>> {
    let Some(order) = auditor.read_order(id).await? else {
        return Ok(None);
    };
    let (published, applied) = auditor.read_events(id).await?;
    Ok(Some(Story {
        order,
        steps: history::story(published, applied),
    }))
}

fn ms(d: TimeDelta) -> String {
    let ms = d.num_milliseconds();
    if ms.abs() >= 10_000 {
        format!("{:+.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms:+} ms")
    }
}

/// The story as text: one line per event (time from the first, type,
/// producer, stream#seq, cause and delay), who applied it and after how
/// long, then each participant's record.
pub fn render_story(story: &Story) -> String {
    let o = &story.order;
    let mut out = format!(
        "order {} {} (customer {}, total {})\n",
        o.id,
        o.state,
        o.customer,
        o.total
            .map_or_else(|| "not priced".to_owned(), |t| t.to_string())
    );
    let Some(start) = story.steps.first().map(|s| s.at) else {
        out.push_str("  no events kept for it (older than the retention?)\n");
        return out;
    };
    out.push_str(&format!(
        "  first event at {}\n",
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ));
    for s in &story.steps {
        let position = match (&s.stream, s.seq) {
            (Some(stream), Some(seq)) => format!("{stream}#{seq}"),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "  {:>10}  {:<20} {:<16} {:<22}",
            ms(s.at - start),
            s.event_type,
            s.producer.unwrap_or("?"),
            position
        ));
        match (&s.caused_by, s.after_cause) {
            (Some(cause), Some(after)) => {
                out.push_str(&format!(" after {cause} {}", ms(after)));
            }
            _ if s.causation_id.is_some() => out.push_str(" cause not kept"),
            _ => {}
        }
        out.push('\n');
        if !s.applied_by.is_empty() {
            let applied: Vec<String> = s
                .applied_by
                .iter()
                .map(|(who, at)| format!("{who} {}", ms(*at - s.at)))
                .collect();
            out.push_str(&format!("{:14}applied by {}\n", "", applied.join(", ")));
        }
    }
    out.push_str("  records:\n");
    out.push_str(&format!(
        "    order-svc        {} lines {}\n",
        o.state,
        o.lines
            .iter()
            .map(|(sku, q, p)| match p {
                Some(p) => format!("{sku} x{q} @ {p}"),
                None => format!("{sku} x{q}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let holds: Vec<String> = o
        .holds
        .iter()
        .map(|h| format!("{} x{} @ {} {}", h.sku, h.quantity, h.unit_price, h.state))
        .collect();
    out.push_str(&format!(
        "    inventory-svc    {} holds {}\n",
        o.stock.as_deref().unwrap_or("no decision"),
        if holds.is_empty() {
            "none".to_owned()
        } else {
            holds.join(", ")
        }
    ));
    let ledger: Vec<String> = o
        .ledger
        .iter()
        .map(|m| format!("{} {}", m.kind, m.amount))
        .collect();
    out.push_str(&format!(
        "    payment-svc      {} ledger {}\n",
        o.payment.as_ref().map_or_else(
            || "no payment".to_owned(),
            |p| format!("{} {}", p.state, p.amount)
        ),
        if ledger.is_empty() {
            "none".to_owned()
        } else {
            ledger.join(", ")
        }
    ));
    out.push_str(&format!(
        "    reservation-svc  {}\n",
        match (o.slot, &o.booking) {
            (None, _) => "no slot asked".to_owned(),
            (Some(slot), Some(b)) => format!("slot {slot}: {b}"),
            (Some(slot), None) => format!("slot {slot}: no booking"),
        }
    ));
    out
}

/// An open order as order-svc records it: its state and where each
/// participant stands.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenOrder {
    pub id: Uuid,
    pub state: String,
    pub inventory: String,
    pub slot: String,
    pub payment: String,
    pub updated_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
}

/// A step an open order waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    /// The service that owes it.
    pub by: &'static str,
    /// What it owes: an event to publish, apply or relay.
    pub step: String,
    /// The stream whose consumer of `by` must act (None: its outbox relay).
    pub reads: Option<StreamKind>,
}

/// What `order` waits for, given the events each service has published
/// for it (`(service, event)` from their outboxes).
pub fn owed(order: &OpenOrder, published: &[(&'static str, Published)]) -> Vec<Owed> {
    let sent = |ty: EventType| published.iter().find(|(_, p)| p.event_type == ty.as_str());
    // A participant's answer: either type. Published by its relay yet?
    let answer = |by: &'static str, yes: EventType, no: EventType, cause: EventType| match sent(yes)
        .or_else(|| sent(no))
    {
        Some((_, p)) if p.published_at.is_none() => Owed {
            by,
            step: format!("publish {} (in its outbox, not yet relayed)", p.event_type),
            reads: None,
        },
        Some((_, p)) => Owed {
            by: "order-svc",
            step: format!("apply {}", p.event_type),
            reads: Some(yes.stream()),
        },
        None => Owed {
            by,
            step: format!("{} or {} for {}", yes.as_str(), no.as_str(), cause.as_str()),
            reads: Some(cause.stream()),
        },
    };
    // Order-svc's own event, once it is in its outbox, must be relayed.
    let relayed = |ty: EventType| match sent(ty) {
        Some((_, p)) if p.published_at.is_none() => Some(Owed {
            by: "order-svc",
            step: format!("publish {} (in its outbox, not yet relayed)", ty.as_str()),
            reads: None,
        }),
        _ => None,
    };
    let mut out = Vec::new();
    match order.state.as_str() {
        "PENDING" => {
            if let Some(o) = relayed(EventType::OrderPlaced) {
                return vec![o];
            }
            if order.inventory == "PENDING" {
                out.push(answer(
                    "inventory-svc",
                    EventType::InventoryReserved,
                    EventType::InventoryRejected,
                    EventType::OrderPlaced,
                ));
            }
            if order.slot == "PENDING" {
                out.push(answer(
                    "reservation-svc",
                    EventType::ReservationHeld,
                    EventType::ReservationRejected,
                    EventType::OrderPlaced,
                ));
            }
            if out.is_empty() {
                out.push(Owed {
                    by: "order-svc",
                    step: "orders.reserved or orders.cancelled (every answer is in)".into(),
                    reads: None,
                });
            }
        }
        "RESERVED" => {
            if let Some(o) = relayed(EventType::OrderReserved) {
                return vec![o];
            }
            if order.payment == "NONE" {
                out.push(answer(
                    "payment-svc",
                    EventType::PaymentSucceeded,
                    EventType::PaymentFailed,
                    EventType::OrderReserved,
                ));
            } else {
                out.push(Owed {
                    by: "order-svc",
                    step: "orders.confirmed or orders.cancelled (the payment is in)".into(),
                    reads: None,
                });
            }
        }
        _ => {}
    }
    out
}

/// How a service's durable consumer of a stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerLag {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
    /// How long the oldest unacknowledged message has been in the stream.
    pub oldest_unacked: Option<Duration>,
}

/// The lag of `durable` on `kind` (None: no such consumer).
pub async fn consumer_lag(
    js: &jetstream::Context,
    ns: &Namespace,
    durable: &str,
    kind: StreamKind,
) -> anyhow::Result<Option<ConsumerLag>> {
    let stream = js.get_stream(ns.stream(kind)).await?;
    let Ok(info) = stream.consumer_info(durable).await else {
        return Ok(None);
    };
    let unacked = info.num_ack_pending as u64;
    let oldest_unacked = if unacked == 0 {
        None
    } else {
        // The ack floor's next message is the oldest one not acknowledged.
        match stream
            .get_raw_message(info.ack_floor.stream_sequence + 1)
            .await
        {
            Ok(msg) => (Utc::now() - msg.time).to_std().ok(),
            Err(_) => None,
        }
    };
    Ok(Some(ConsumerLag {
        pending: info.num_pending,
        unacked,
        oldest_unacked,
    }))
}

/// A stuck order: what it waits for, and how each owing consumer stands.
#[derive(Clone, Debug)]
pub struct Stuck {
    pub order: OpenOrder,
    pub owed: Vec<(Owed, Option<ConsumerLag>)>,
}

/// Open orders unchanged for `older_than` (at most `limit`, oldest first)
/// with what each waits for.
pub async fn stuck(
    auditor: &Auditor,
    older_than: Duration,
    limit: i64,
) -> anyhow::Result<Vec<Stuck>> {
    let open = auditor.read_open_orders(older_than, limit).await?;
    let mut out = Vec::with_capacity(open.len());
    for order in open {
        let published = auditor.read_published(order.id).await?;
        let mut owes = Vec::new();
        for o in owed(&order, &published) {
            let lag = match o.reads {
                Some(kind) => consumer_lag(auditor.js(), auditor.ns(), o.by, kind).await?,
                None => None,
            };
            owes.push((o, lag));
        }
        out.push(Stuck { order, owed: owes });
    }
    Ok(out)
}

/// The stuck orders as a table.
pub fn render_stuck(stuck: &[Stuck], now: DateTime<Utc>) -> String {
    if stuck.is_empty() {
        return "no open order waits longer than asked\n".to_owned();
    }
    let mut out = format!(
        "{:<36} {:<8} {:>9} {:>10}  {:<16} {:<58} {}\n",
        "order", "state", "waiting", "deadline", "owed by", "step", "its consumer"
    );
    for s in stuck {
        let o = &s.order;
        for (i, (owed, lag)) in s.owed.iter().enumerate() {
            let (id, state, waiting, deadline) = if i == 0 {
                (
                    o.id.to_string(),
                    o.state.clone(),
                    format!("{:.1} s", (now - o.updated_at).as_seconds_f64()),
                    format!("{:+.1} s", (o.deadline_at - now).as_seconds_f64()),
                )
            } else {
                Default::default()
            };
            let consumer = match (owed.reads, lag) {
                (None, _) => "outbox relay".to_owned(),
                (Some(_), None) => "no consumer".to_owned(),
                (Some(kind), Some(l)) => format!(
                    "on {kind:?}: {} pending, {} unacked{}",
                    l.pending,
                    l.unacked,
                    l.oldest_unacked.map_or_else(String::new, |a| format!(
                        ", oldest {:.1} s",
                        a.as_secs_f64()
                    ))
                ),
            };
            out.push_str(&format!(
                "{id:<36} {state:<8} {waiting:>9} {deadline:>10}  {:<16} {:<58} {consumer}\n",
                owed.by, owed.step
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(state: &str, inventory: &str, slot: &str, payment: &str) -> OpenOrder {
        OpenOrder {
            id: Uuid::nil(),
            state: state.into(),
            inventory: inventory.into(),
            slot: slot.into(),
            payment: payment.into(),
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
            deadline_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn event(by: &'static str, ty: EventType, relayed: bool) -> (&'static str, Published) {
        (
            by,
            Published {
                event_id: Uuid::now_v7(),
                event_type: ty.as_str().into(),
                causation_id: None,
                created_at: DateTime::<Utc>::UNIX_EPOCH,
                published_at: relayed.then_some(DateTime::<Utc>::UNIX_EPOCH),
            },
        )
    }

    #[test]
    fn a_placed_order_waits_for_each_undecided_participant() {
        let placed = event("order-svc", EventType::OrderPlaced, true);
        let owes = owed(
            &open("PENDING", "PENDING", "PENDING", "NONE"),
            std::slice::from_ref(&placed),
        );
        let by: Vec<&str> = owes.iter().map(|o| o.by).collect();
        assert_eq!(by, ["inventory-svc", "reservation-svc"]);
        assert_eq!(owes[0].reads, Some(StreamKind::Orders));
        assert!(owes[0].step.contains("for orders.placed"), "{:?}", owes[0]);

        let owes = owed(&open("PENDING", "RESERVED", "NONE", "NONE"), &[placed]);
        assert_eq!(owes.len(), 1);
        assert_eq!(owes[0].by, "order-svc");
    }

    #[test]
    fn an_answer_published_but_not_applied_is_owed_by_order_svc_and_one_not_relayed_by_its_relay() {
        let placed = event("order-svc", EventType::OrderPlaced, true);
        let order = open("PENDING", "PENDING", "NONE", "NONE");
        let answered = event("inventory-svc", EventType::InventoryReserved, true);
        let owes = owed(&order, &[placed.clone(), answered]);
        assert_eq!(owes[0].by, "order-svc");
        assert_eq!(owes[0].step, "apply inventory.reserved");
        assert_eq!(owes[0].reads, Some(StreamKind::Inventory));

        let unrelayed = event("inventory-svc", EventType::InventoryRejected, false);
        let owes = owed(&order, &[placed, unrelayed]);
        assert_eq!((owes[0].by, owes[0].reads), ("inventory-svc", None));
        assert!(owes[0].step.starts_with("publish inventory.rejected"));
    }

    #[test]
    fn an_order_event_not_relayed_is_all_that_is_owed() {
        let order = open("PENDING", "PENDING", "PENDING", "NONE");
        let owes = owed(&order, &[event("order-svc", EventType::OrderPlaced, false)]);
        assert_eq!(owes.len(), 1);
        assert_eq!((owes[0].by, owes[0].reads), ("order-svc", None));

        let reserved = open("RESERVED", "RESERVED", "NONE", "NONE");
        let owes = owed(
            &reserved,
            &[event("order-svc", EventType::OrderReserved, true)],
        );
        assert_eq!(owes[0].by, "payment-svc");
        assert!(owes[0].step.contains("for orders.reserved"));
        assert!(owed(&open("CONFIRMED", "RESERVED", "NONE", "CAPTURED"), &[]).is_empty());
    }
}

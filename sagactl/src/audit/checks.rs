//! The checks: pure functions, facts in, violations out. One per invariant
//! (some take one SKU, wallet, slot or order; [`check_order`] runs every
//! check of an order).

use std::collections::BTreeMap;
use std::time::Duration;

use inventory_svc::domain::{StockRecord, redis_disagreements};
use uuid::Uuid;

use super::facts::{Movement, OrderFacts, SkuFacts, SlotFacts, WalletFacts};
use super::{Check, Violation};

#[cfg(test)]
mod tests;

/// Postgres's own stock arithmetic.
pub fn check_stock(s: &SkuFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |d: String| {
        out.push(Violation::new(
            Check::StockConservation,
            format!("{}: {d}", s.sku),
        ));
    };
    if s.reserved != s.ledger_held {
        flag(format!(
            "reserved {} but the ledger holds {}",
            s.reserved, s.ledger_held
        ));
    }
    if s.sold != s.ledger_committed {
        flag(format!(
            "sold {} but the ledger committed {}",
            s.sold, s.ledger_committed
        ));
    }
    if s.on_hand - s.reserved - s.sold < 0 {
        flag(format!(
            "oversold: on_hand {} < reserved {} + sold {}",
            s.on_hand, s.reserved, s.sold
        ));
    }
    out
}

/// Redis against Postgres, for a SKU whose counter was read: the rule the
/// reconciler applies ([`inventory_svc::domain::redis_disagreements`]), on
/// every hold Postgres has decided.
pub fn check_redis(s: &SkuFacts, now_ms: i64, grace: Duration) -> Vec<Violation> {
    let Some(redis) = &s.redis else {
        return Vec::new();
    };
    let record = StockRecord {
        on_hand: s.on_hand,
        sold: s.sold,
        epoch: s.epoch,
        held: s.pg_holds.clone(),
        decided: s
            .decided
            .iter()
            .map(|(order, state)| (order.clone(), state.clone()))
            .collect(),
    };
    redis_disagreements(&record, redis, now_ms, grace)
        .into_iter()
        .map(|d| Violation::new(Check::RedisMatchesPostgres, format!("{}: {d}", s.sku)))
        .collect()
}

/// Each ledger movement of an order against its payment and the order.
pub fn check_charges(o: &OrderFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |d: String| {
        out.push(Violation::new(
            Check::ChargesMatchPayments,
            format!("order {}: {d}", o.id),
        ));
    };
    let charges: Vec<&Movement> = o.ledger.iter().filter(|m| m.kind == "CHARGE").collect();
    let refunds: Vec<&Movement> = o.ledger.iter().filter(|m| m.kind == "REFUND").collect();
    let Some(p) = &o.payment else {
        if !o.ledger.is_empty() {
            flag(format!(
                "{} ledger movements and no payment",
                o.ledger.len()
            ));
        }
        return out;
    };
    let (want_charges, want_refunds) = match p.state.as_str() {
        "CAPTURED" => (1, 0),
        "REFUNDED" => (1, 1),
        _ => (0, 0),
    };
    if charges.len() != want_charges || refunds.len() != want_refunds {
        flag(format!(
            "payment {} with {} charges and {} refunds in the ledger",
            p.state,
            charges.len(),
            refunds.len()
        ));
    }
    for m in &o.ledger {
        if m.amount != p.amount {
            flag(format!(
                "{} of {} for a payment of {}",
                m.kind, m.amount, p.amount
            ));
        }
        if m.customer != p.customer {
            flag(format!(
                "{} to {:?}, the payment is {:?}'s",
                m.kind, m.customer, p.customer
            ));
        }
    }
    if matches!(p.state.as_str(), "CAPTURED" | "REFUNDED") {
        if p.customer != o.customer {
            flag(format!(
                "paid by {:?}, placed by {:?}",
                p.customer, o.customer
            ));
        }
        if Some(p.amount) != o.total {
            flag(format!("paid {} for a total of {:?}", p.amount, o.total));
        }
    }
    out
}

/// An order's holds against its lines and against its decision.
pub fn check_holds(o: &OrderFacts) -> Vec<Violation> {
    let mut out = Vec::new();
    if o.holds.is_empty() {
        return out;
    }
    let lines: BTreeMap<&str, i64> = o.lines.iter().map(|(s, q, _)| (s.as_str(), *q)).collect();
    let holds: BTreeMap<&str, i64> = o
        .holds
        .iter()
        .map(|h| (h.sku.as_str(), h.quantity))
        .collect();
    if lines != holds {
        out.push(Violation::new(
            Check::HoldsMatchOrders,
            format!("order {}: holds {holds:?}, lines {lines:?}", o.id),
        ));
    }
    // A hold moves with its order's decision (one statement moves both);
    // a rejected order has none.
    for h in &o.holds {
        if h.state != h.decision || h.decision == "REJECTED" {
            out.push(Violation::new(
                Check::HoldsMatchOrders,
                format!(
                    "order {}: hold of {} is {}, the decision is {}",
                    o.id, h.sku, h.state, h.decision
                ),
            ));
        }
    }
    for (sku, _, price) in &o.lines {
        let held_at = o.holds.iter().find(|h| &h.sku == sku).map(|h| h.unit_price);
        if let (Some(price), Some(held_at)) = (price, held_at)
            && *price != held_at
        {
            out.push(Violation::new(
                Check::HoldsMatchOrders,
                format!("order {}: {sku} priced {price}, held at {held_at}", o.id),
            ));
        }
    }
    out
}

/// An order's total against its priced lines.
pub fn check_total(o: &OrderFacts) -> Vec<Violation> {
    let Some(total) = o.total else {
        return Vec::new();
    };
    let sum: Option<i64> = o
        .lines
        .iter()
        .map(|(_, q, p)| p.and_then(|p| p.checked_mul(*q)))
        .sum();
    if sum == Some(total) {
        Vec::new()
    } else {
        vec![Violation::new(
            Check::TotalsMatchPrices,
            format!("order {}: total {total}, lines sum to {sum:?}", o.id),
        )]
    }
}

/// What a terminal (or overdue) order requires of its participants.
pub fn check_outcome(o: &OrderFacts) -> Vec<Violation> {
    let stock = o.stock.as_deref();
    let booking = o.booking.as_deref();
    let net = o.net_charge();
    match o.state.as_str() {
        "CONFIRMED" => {
            let mut missing = Vec::new();
            if stock != Some("COMMITTED") {
                missing.push(format!("stock is {stock:?}"));
            }
            if o.slot.is_some() && booking != Some("CONFIRMED") {
                missing.push(format!("slot booking is {booking:?}"));
            }
            match &o.payment {
                Some(p) if p.state == "CAPTURED" && Some(p.amount) == o.total => {}
                other => missing.push(format!("payment is {other:?} for total {:?}", o.total)),
            }
            if net != o.total.unwrap_or(0) {
                missing.push(format!("net charge {net} for total {:?}", o.total));
            }
            if missing.is_empty() {
                Vec::new()
            } else {
                vec![Violation::new(
                    Check::ConfirmedComplete,
                    format!("order {}: {}", o.id, missing.join(", ")),
                )]
            }
        }
        "CANCELLED" => {
            let mut left = Vec::new();
            if matches!(stock, Some("RESERVED" | "COMMITTED")) {
                left.push(format!("stock is {stock:?}"));
            }
            if matches!(booking, Some("HELD" | "CONFIRMED")) {
                left.push(format!("slot booking is {booking:?}"));
            }
            if net != 0 {
                left.push(format!("net charge {net}"));
            }
            if matches!(&o.payment, Some(p) if p.state == "CAPTURED") {
                left.push("payment still captured".to_owned());
            }
            if left.is_empty() {
                Vec::new()
            } else {
                vec![Violation::new(
                    Check::CancelledCompensated,
                    format!("order {}: {}", o.id, left.join(", ")),
                )]
            }
        }
        open if o.overdue => vec![Violation::new(
            Check::NoOrderStuck,
            format!("order {} still {open} past its deadline", o.id),
        )],
        _ => Vec::new(),
    }
}

/// Every check of one order.
pub fn check_order(o: &OrderFacts) -> Vec<Violation> {
    let mut out = check_charges(o);
    out.extend(check_holds(o));
    out.extend(check_total(o));
    out.extend(check_outcome(o));
    out
}

/// A wallet's balance against its ledger.
pub fn check_wallet(w: &WalletFacts) -> Vec<Violation> {
    let WalletFacts {
        customer,
        balance,
        topups: t,
        charges: c,
        refunds: f,
    } = w;
    if *balance == t - c + f {
        return Vec::new();
    }
    vec![Violation::new(
        Check::WalletConservation,
        format!("{customer}: balance {balance} != top-ups {t} - charges {c} + refunds {f}"),
    )]
}

/// A slot's counts against its capacity and its bookings.
pub fn check_slot(s: &SlotFacts) -> Vec<Violation> {
    let SlotFacts {
        id,
        capacity: cap,
        held,
        confirmed,
        booked_held: bh,
        booked_confirmed: bc,
    } = s;
    let mut out = Vec::new();
    if held + confirmed > *cap {
        out.push(Violation::new(
            Check::SlotCapacity,
            format!("slot {id}: {held} held + {confirmed} confirmed > capacity {cap}"),
        ));
    }
    if held != bh || confirmed != bc {
        out.push(Violation::new(
            Check::SlotCapacity,
            format!("slot {id}: counts {held}/{confirmed} but bookings {bh}/{bc}"),
        ));
    }
    out
}

/// Orders that money moved for and order-svc does not know.
pub fn check_unknown_orders(unknown: &[Uuid]) -> Vec<Violation> {
    unknown
        .iter()
        .map(|order| {
            Violation::new(
                Check::ChargesMatchPayments,
                format!("order {order}: money moved for an order nobody placed"),
            )
        })
        .collect()
}

/// A service's outbox rows not yet published.
pub fn check_outbox(service: &str, unpublished: i64) -> Vec<Violation> {
    if unpublished > 0 {
        vec![Violation::new(
            Check::OutboxDrained,
            format!("{service}: {unpublished} events not published"),
        )]
    } else {
        Vec::new()
    }
}

/// The messages waiting in the DLQ stream `dlq`.
pub fn check_dead_letters(letters: u64, dlq: &str) -> Vec<Violation> {
    if letters > 0 {
        vec![Violation::new(
            Check::DeadLettersHandled,
            format!("{letters} wait in {dlq} for an operator (sagactl dlq list)"),
        )]
    } else {
        Vec::new()
    }
}

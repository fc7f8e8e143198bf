//! Human-readable rendering of API messages for the terminal.

use saga_shared::proto::inventory::v1 as inv;
use saga_shared::proto::order::v1 as ord;
use saga_shared::proto::payment::v1 as pay;
use saga_shared::proto::reservation::v1 as rsv;

pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

pub fn order_state(state: i32) -> &'static str {
    match ord::OrderState::try_from(state) {
        Ok(ord::OrderState::Pending) => "PENDING",
        Ok(ord::OrderState::Reserved) => "RESERVED",
        Ok(ord::OrderState::Confirmed) => "CONFIRMED",
        Ok(ord::OrderState::Cancelled) => "CANCELLED",
        _ => "UNKNOWN",
    }
}

pub fn cancel_reason(reason: i32) -> &'static str {
    match ord::CancelReason::try_from(reason) {
        Ok(ord::CancelReason::OutOfStock) => "out_of_stock",
        Ok(ord::CancelReason::SlotUnavailable) => "slot_unavailable",
        Ok(ord::CancelReason::PaymentDeclined) => "payment_declined",
        Ok(ord::CancelReason::InsufficientFunds) => "insufficient_funds",
        Ok(ord::CancelReason::Timeout) => "timeout",
        Ok(ord::CancelReason::CustomerCancelled) => "customer_cancelled",
        _ => "",
    }
}

pub fn order(o: &ord::Order) -> String {
    let mut s = format!("order {}  {}", o.order_id, order_state(o.state));
    if o.state == ord::OrderState::Cancelled as i32 {
        s.push_str(&format!(" ({})", cancel_reason(o.cancel_reason)));
    }
    s.push_str(&format!("\n  customer {}", o.customer_id));
    for l in &o.lines {
        match l.unit_price_cents {
            Some(p) => s.push_str(&format!("\n  {} x {} @ {}", l.quantity, l.sku, money(p))),
            None => s.push_str(&format!("\n  {} x {}", l.quantity, l.sku)),
        }
    }
    if let Some(slot) = &o.slot_id {
        s.push_str(&format!("\n  slot {slot}"));
    }
    if let Some(total) = o.total_cents {
        s.push_str(&format!("\n  total {}", money(total)));
    }
    s
}

pub fn stock(st: &inv::Stock) -> String {
    format!(
        "{:<16} {:<24} price {:>10}  on hand {:>6}  available {:>6}  reserved {:>6}  sold {:>6}  v{}",
        st.sku,
        st.name,
        money(st.unit_price_cents),
        st.on_hand,
        st.available,
        st.reserved,
        st.sold,
        st.version
    )
}

pub fn wallet(w: &pay::Wallet) -> String {
    format!(
        "wallet {}  balance {}  (topped up {}, charged {}, refunded {})",
        w.customer_id,
        money(w.balance_cents),
        money(w.topped_up_cents),
        money(w.charged_cents),
        money(w.refunded_cents)
    )
}

pub fn slot(s: &rsv::Slot) -> String {
    format!(
        "slot {}  {:<20} capacity {:>4}  held {:>4}  confirmed {:>4}  available {:>4}",
        s.slot_id, s.name, s.capacity, s.held, s.confirmed, s.available
    )
}

pub fn payment(p: &pay::Payment) -> String {
    let state = match pay::PaymentState::try_from(p.state) {
        Ok(pay::PaymentState::Captured) => "CAPTURED",
        Ok(pay::PaymentState::Failed) => "FAILED",
        Ok(pay::PaymentState::Refunded) => "REFUNDED",
        Ok(pay::PaymentState::Voided) => "VOIDED",
        _ => "UNKNOWN",
    };
    let mut s = format!(
        "payment {} for order {}  {}  {}",
        p.payment_id,
        p.order_id,
        state,
        money(p.amount_cents)
    );
    if !p.failure_reason.is_empty() {
        s.push_str(&format!(" ({})", p.failure_reason));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_is_shown_in_major_units() {
        assert_eq!(super::money(0), "0.00");
        assert_eq!(super::money(1234), "12.34");
        assert_eq!(super::money(-5), "-0.05");
        assert_eq!(super::money(i64::MIN), "-92233720368547758.08");
    }
}

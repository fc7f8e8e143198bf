//! The messages in a consumer's hands (received, not yet settled): their
//! "in progress" reports to the server, and the age of those failing
//! transiently.

use super::*;

/// The messages in this consumer's hands (received, not yet settled), and
/// the events that are failing transiently, for their age.
#[derive(Default)]
pub(super) struct Hands {
    pub(super) next_id: AtomicU64,
    pub(super) held: Mutex<HashMap<u64, InHand>>,
    pub(super) retrying: Mutex<HashMap<Uuid, Retrying>>,
}

pub(super) struct InHand {
    pub(super) reply: Option<async_nats::Subject>,
    pub(super) client: async_nats::Client,
    /// When the server last heard about it (delivery, or "in progress").
    pub(super) touched: Instant,
}

pub(super) struct Retrying {
    pub(super) event_type: EventType,
    /// When the event was first stored in its stream.
    pub(super) published: chrono::DateTime<chrono::Utc>,
    pub(super) seen: Instant,
    /// Its unexpected failures so far, in this process (what the delivery
    /// bound counts; transient ones do not).
    pub(super) unexpected: u32,
}

/// A message in hand, from its arrival until it is settled; dropping it
/// (settled, or a task that died) stops the "in progress" notices, so a
/// message nobody settles is redelivered after `ack_wait`.
pub(super) struct Held {
    pub(super) id: u64,
    pub(super) msg: jetstream::Message,
    pub(super) hands: Arc<Hands>,
    pub(super) _room: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.hands.held).remove(&self.id);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hands {
    pub(super) fn hold(
        self: &Arc<Self>,
        msg: jetstream::Message,
        room: OwnedSemaphorePermit,
    ) -> Held {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.held).insert(
            id,
            InHand {
                reply: msg.reply.clone(),
                client: msg.context.client(),
                touched: Instant::now(),
            },
        );
        Held {
            id,
            msg,
            hands: self.clone(),
            _room: room,
        }
    }

    /// Tells the server "in progress" for every message in hand it has not
    /// heard about for `after`, so that its ack wait starts again.
    pub(super) async fn keep_alive(&self, after: Duration) {
        let due: Vec<(async_nats::Subject, async_nats::Client)> = {
            let mut held = lock(&self.held);
            let now = Instant::now();
            held.values_mut()
                .filter(|h| now.duration_since(h.touched) >= after)
                .filter_map(|h| {
                    h.touched = now;
                    h.reply.clone().map(|r| (r, h.client.clone()))
                })
                .collect()
        };
        for (reply, client) in due {
            if let Err(e) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::debug!(error = %e, "in-progress notice not sent");
            }
        }
    }

    /// Records a failure of `d` (`unexpected`, or transient): how long the
    /// event has been failing, and how many unexpected failures it has had.
    pub(super) fn retrying(
        &self,
        d: &Delivery,
        published: chrono::DateTime<chrono::Utc>,
        unexpected: bool,
    ) -> (Duration, u32) {
        let mut retrying = lock(&self.retrying);
        let entry = retrying.entry(d.meta.event_id).or_insert(Retrying {
            event_type: d.event_type(),
            published,
            seen: Instant::now(),
            unexpected: 0,
        });
        entry.seen = Instant::now();
        entry.unexpected += u32::from(unexpected);
        let age = (chrono::Utc::now() - entry.published)
            .to_std()
            .unwrap_or_default();
        (age, entry.unexpected)
    }

    pub(super) fn settled(&self, event_id: Uuid) {
        lock(&self.retrying).remove(&event_id);
    }

    /// The age of the oldest event still failing transiently, per event
    /// type (forgetting those not seen again for `forget`: another instance
    /// took them).
    pub(super) fn retry_ages(&self, forget: Duration) -> HashMap<EventType, f64> {
        let mut retrying = lock(&self.retrying);
        retrying.retain(|_, r| r.seen.elapsed() < forget);
        let now = chrono::Utc::now();
        let mut out: HashMap<EventType, f64> = HashMap::new();
        for r in retrying.values() {
            let age = (now - r.published).num_milliseconds().max(0) as f64 / 1e3;
            let e = out.entry(r.event_type).or_default();
            *e = e.max(age);
        }
        out
    }
}

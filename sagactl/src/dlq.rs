//! The dead-letter queue, for operators: list what is there, look at one,
//! and send it back to where it came from once the cause is fixed.
//!
//! A redriven message goes back to its original subject with its original
//! headers (so the same `Saga-Event-Id`) and a new `Nats-Msg-Id` (so
//! JetStream's duplicate window does not drop it). Every consumer of that
//! stream sees it again; those that handled it already skip it (their inbox
//! has the event id); the one that failed handles it. It is removed from the
//! DLQ once JetStream has acknowledged the republish.
//!
//! That holds only while those inboxes remember the event: a letter older
//! than the inboxes' retention would be applied again by a consumer that
//! purged its row. So a redrive first reads each other consumer's inbox
//! horizon ([`Inboxes`]) and refuses such a letter unless forced.

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use saga_shared::bus::dlq::headers as dlq_headers;
use saga_shared::bus::envelope::headers as event_headers;
use saga_shared::bus::reader::StreamReader;
use saga_shared::bus::{Namespace, SagaEvent, retention};

use crate::replay::{Consumes, SERVICES, service_pool};
use crate::system::SystemConfig;

/// One dead letter.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its sequence in the DLQ stream.
    pub seq: u64,
    pub at: String,
    pub consumer: String,
    /// Where it came from.
    pub subject: String,
    pub stream: String,
    pub stream_seq: String,
    pub delivered: String,
    pub error: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    fn from_stored(msg: jetstream::message::StreamMessage) -> Self {
        Self::from_parts(msg.sequence, msg.headers, msg.payload)
    }

    fn from_parts(seq: u64, headers: async_nats::HeaderMap, payload: bytes::Bytes) -> Self {
        let h = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        Self {
            seq,
            at: h(dlq_headers::AT),
            consumer: h(dlq_headers::CONSUMER),
            subject: h(dlq_headers::SUBJECT),
            stream: h(dlq_headers::STREAM),
            stream_seq: h(dlq_headers::SEQUENCE),
            delivered: h(dlq_headers::DELIVERED),
            error: h(dlq_headers::ERROR),
            headers,
            payload,
        }
    }

    /// The body decoded as the event its subject names, if it decodes.
    pub fn decoded(&self, ns: &Namespace) -> Result<SagaEvent, String> {
        let event_type = ns
            .event_type_of(&self.subject)
            .ok_or_else(|| format!("{:?} is not an event subject of {ns}", self.subject))?;
        SagaEvent::decode(event_type, &self.payload).map_err(|e| e.to_string())
    }
}

async fn dlq_stream(
    js: &jetstream::Context,
    ns: &Namespace,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(ns.dlq_stream()).await.with_context(|| {
        format!(
            "no DLQ stream {} (is the namespace right?)",
            ns.dlq_stream()
        )
    })
}

/// Every dead letter, oldest first.
pub async fn list(js: &jetstream::Context, ns: &Namespace) -> anyhow::Result<Vec<DeadLetter>> {
    dlq_stream(js, ns).await?;
    // Read with a consumer of its own, which passes over the gaps that
    // redriven letters leave (asking for each sequence in turn cost a round
    // trip per letter ever redriven). A failure is said, not skipped: a
    // letter left out would not be redriven by `--all`.
    let name = ns.dlq_stream();
    let reading = || format!("reading the dead letters of {name}");
    let mut reader = StreamReader::open(js, &name, 1, None)
        .await
        .with_context(reading)?;
    let mut out = Vec::new();
    loop {
        let batch = reader.next_batch(500).await.with_context(reading)?;
        if batch.is_empty() {
            return Ok(out);
        }
        for msg in batch {
            let seq = msg
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(reading)?
                .stream_sequence;
            let msg = msg.split().0;
            out.push(DeadLetter::from_parts(
                seq,
                msg.headers.unwrap_or_default(),
                msg.payload,
            ));
        }
    }
}

/// Letter `seq`, if the DLQ holds it.
async fn held(
    stream: &jetstream::stream::Stream,
    seq: u64,
) -> anyhow::Result<Option<jetstream::message::StreamMessage>> {
    match stream.get_raw_message(seq).await {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One dead letter.
pub async fn get(js: &jetstream::Context, ns: &Namespace, seq: u64) -> anyhow::Result<DeadLetter> {
    let stream = dlq_stream(js, ns).await?;
    let msg = held(&stream, seq)
        .await?
        .with_context(|| format!("no dead letter {seq} in {}", ns.dlq_stream()))?;
    Ok(DeadLetter::from_stored(msg))
}

/// The inboxes of the services, read before a redrive: which of them may
/// have forgotten a letter's event.
pub struct Inboxes {
    pools: Vec<(&'static Consumes, sqlx::PgPool)>,
}

impl Inboxes {
    /// Connects to each service's database, as configured.
    pub async fn open(cfg: &SystemConfig) -> anyhow::Result<Self> {
        let mut pools = Vec::new();
        for c in &SERVICES {
            pools.push((c, service_pool(cfg, c).await?));
        }
        Ok(Self { pools })
    }

    /// The consumers, other than the one that failed, whose inbox may have
    /// forgotten the letter's event (purged it past retention).
    pub async fn forgetting(
        &self,
        ns: &Namespace,
        letter: &DeadLetter,
    ) -> anyhow::Result<Vec<String>> {
        // No event id: no inbox could have recorded it.
        let Some(id) = letter.headers.get(event_headers::EVENT_ID) else {
            return Ok(Vec::new());
        };
        let minted = id.as_str().parse().ok().and_then(retention::minted_at);
        let seq = letter.stream_seq.parse().unwrap_or(0);
        let mut out = Vec::new();
        for (consumes, pool) in &self.pools {
            let service = consumes.service;
            let reads = consumes
                .input
                .iter()
                .any(|kind| ns.stream(*kind) == letter.stream);
            if !reads || service == letter.consumer {
                continue;
            }
            let horizon = retention::horizon(pool, service, &letter.stream)
                .await
                .with_context(|| format!("reading {service}'s inbox horizon"))?;
            if let Some(h) = horizon
                && h.may_have_forgotten(seq, minted)
            {
                out.push(format!(
                    "{service} (its inbox forgot {} up to #{} and what it applied before {})",
                    letter.stream, h.seq, h.purged_before
                ));
            }
        }
        Ok(out)
    }

    pub async fn close(self) {
        for (_, pool) in self.pools {
            pool.close().await;
        }
    }
}

/// What a redrive checks first.
#[derive(Clone, Copy)]
pub enum Guard<'a> {
    /// Refuse a letter that some inbox may have forgotten.
    Inboxes(&'a Inboxes),
    /// Send it back anyway (`--force`): the operator has made sure the
    /// consumers that applied it will not apply it again.
    Force,
}

/// What became of a letter a redrive was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redriven {
    /// Sent back to this subject, and removed from the DLQ.
    SentBack(String),
    /// Not in the DLQ any more, though it was: redriven already (by another
    /// run, or an earlier one).
    AlreadyGone,
}

/// Redrives each of `seqs` in turn, going on past a letter it cannot send
/// back (refused, unreadable): each letter's outcome, in order.
pub async fn redrive_all(
    js: &jetstream::Context,
    ns: &Namespace,
    seqs: &[u64],
    guard: Guard<'_>,
) -> Vec<(u64, anyhow::Result<Redriven>)> {
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        out.push((seq, redrive(js, ns, seq, guard).await));
    }
    out
}

/// Sends a dead letter back to its original subject and removes it from the
/// DLQ, unless `guard` finds a consumer whose inbox may have forgotten it.
/// Safe to run again, or twice at once: the republication's message id is
/// the letter's own, so JetStream keeps one copy (within the stream's
/// duplicate window; past it, the consumers' inboxes know the event by its
/// id), and a letter that another run removed, meanwhile or before, is a
/// redrive done ([`Redriven::AlreadyGone`]). A sequence the DLQ never
/// reached is an error.
pub async fn redrive(
    js: &jetstream::Context,
    ns: &Namespace,
    seq: u64,
    guard: Guard<'_>,
) -> anyhow::Result<Redriven> {
    let mut dlq = dlq_stream(js, ns).await?;
    let Some(stored) = held(&dlq, seq)
        .await
        .with_context(|| format!("reading dead letter {seq} of {}", ns.dlq_stream()))?
    else {
        let last = dlq.info().await?.state.last_sequence;
        if seq == 0 || seq > last {
            anyhow::bail!(
                "no dead letter {seq} in {}: its letters are numbered 1 to {last}",
                ns.dlq_stream()
            );
        }
        return Ok(Redriven::AlreadyGone);
    };
    let letter = DeadLetter::from_stored(stored);
    if let Some(dropped) = letter.headers.get(dlq_headers::BODY_DROPPED) {
        anyhow::bail!(
            "dead letter {seq} cannot be sent back: its body ({}) was too big to keep \
             with the letter, so only its headers are here",
            dropped.as_str()
        );
    }
    if ns.event_type_of(&letter.subject).is_none() {
        anyhow::bail!(
            "dead letter {seq} came from {:?}, not an event subject of {ns}",
            letter.subject
        );
    }
    if let Guard::Inboxes(inboxes) = guard {
        let forgetting = inboxes.forgetting(ns, &letter).await?;
        if !forgetting.is_empty() {
            anyhow::bail!(
                "dead letter {seq} not sent back: its event may be applied again by {}, \
                 whose inbox no longer remembers events that old. Pass --force once you have \
                 made sure they will not apply it twice.",
                forgetting.join(", ")
            );
        }
    }
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Saga-Dlq-") || name.eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        for value in values {
            headers.append(name, value.as_str());
        }
    }
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("redrive:{}:{seq}", ns.dlq_stream()).as_str(),
    );
    js.send_publish(
        letter.subject.clone(),
        PublishMessage::build()
            .payload(letter.payload.clone())
            .headers(headers),
    )
    .await?
    .await
    .with_context(|| format!("republishing dead letter {seq} to {}", letter.subject))?;
    let removed = dlq.delete_message(seq).await;
    if !matches!(removed, Ok(true)) && held(&dlq, seq).await?.is_some() {
        let why = match removed {
            Err(e) => e.to_string(),
            Ok(_) => "the server did not remove it".into(),
        };
        anyhow::bail!(
            "dead letter {seq} was sent back to {} but is still in {} ({why}); \
             redriving it again is safe",
            letter.subject,
            ns.dlq_stream()
        );
    }
    Ok(Redriven::SentBack(letter.subject))
}

//! The dead-letter queue, for operators: list what is there, look at one,
//! and send it back to where it came from once the cause is fixed.
//!
//! A redriven message goes back to its original subject with its original
//! headers (so the same `Saga-Event-Id`) and a new `Nats-Msg-Id` (so
//! JetStream's duplicate window does not drop it). Every consumer of that
//! stream sees it again; those that handled it already skip it (their inbox
//! has the event id); the one that failed handles it. It is removed from the
//! DLQ once JetStream has acknowledged the republish.

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use saga_shared::bus::dlq::headers as dlq_headers;
use saga_shared::bus::{Namespace, SagaEvent};

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
        let h = |name: &str| {
            msg.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        Self {
            seq: msg.sequence,
            at: h(dlq_headers::AT),
            consumer: h(dlq_headers::CONSUMER),
            subject: h(dlq_headers::SUBJECT),
            stream: h(dlq_headers::STREAM),
            stream_seq: h(dlq_headers::SEQUENCE),
            delivered: h(dlq_headers::DELIVERED),
            error: h(dlq_headers::ERROR),
            headers: msg.headers,
            payload: msg.payload,
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
    let mut stream = dlq_stream(js, ns).await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        // Redriven letters leave gaps; any other failure is said, not
        // skipped (a letter left out would not be redriven by `--all`).
        let letter = held(&stream, seq)
            .await
            .with_context(|| format!("reading dead letter {seq} of {}", ns.dlq_stream()))?;
        out.extend(letter.map(DeadLetter::from_stored));
    }
    Ok(out)
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
    let msg = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("no dead letter {seq} in {}", ns.dlq_stream()))?;
    Ok(DeadLetter::from_stored(msg))
}

/// Sends a dead letter back to its original subject and removes it from the
/// DLQ. Returns the subject it went to. Safe to run again, or twice at once:
/// the republication's message id is the letter's own, so JetStream keeps
/// one copy (within the stream's duplicate window; past it, the consumers'
/// inboxes know the event by its id), and a letter that another run removed
/// meanwhile is a redrive done.
pub async fn redrive(js: &jetstream::Context, ns: &Namespace, seq: u64) -> anyhow::Result<String> {
    let letter = get(js, ns, seq).await?;
    if ns.event_type_of(&letter.subject).is_none() {
        anyhow::bail!(
            "dead letter {seq} came from {:?}, not an event subject of {ns}",
            letter.subject
        );
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
    let dlq = dlq_stream(js, ns).await?;
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
    Ok(letter.subject)
}

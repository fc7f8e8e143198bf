//! Dead letters: messages that cannot be decoded, are permanently invalid, or
//! kept failing until `max_deliver`. They are copied, with their original
//! headers and body, to the namespace's DLQ stream with headers saying where
//! they came from and why, and only then terminated on their consumer.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};

use super::Namespace;

/// Headers added to a dead letter.
pub mod headers {
    pub const ERROR: &str = "Saga-Dlq-Error";
    pub const SUBJECT: &str = "Saga-Dlq-Subject";
    pub const STREAM: &str = "Saga-Dlq-Stream";
    pub const SEQUENCE: &str = "Saga-Dlq-Sequence";
    pub const DELIVERED: &str = "Saga-Dlq-Delivered";
    pub const CONSUMER: &str = "Saga-Dlq-Consumer";
    pub const AT: &str = "Saga-Dlq-At";
    /// `true` on a letter written by a replay (`sagactl replay`), not by
    /// the durable consumer.
    pub const REPLAY: &str = "Saga-Dlq-Replay";
    /// `<n> bytes` on a letter whose body was too big to keep with the
    /// letter's headers (the server's max payload): it was dropped.
    pub const BODY_DROPPED: &str = "Saga-Dlq-Body-Dropped";
}

/// Where a dead letter came from.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    pub consumer: &'a str,
    pub stream: &'a str,
    pub stream_seq: u64,
    /// When the stream stored it: with the sequence, it names the message
    /// even across a stream deleted and made again (sequences start over).
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub delivered: i64,
    /// Written by a replay, not by the durable consumer.
    pub replay: bool,
}

/// A header value must be one line of printable characters.
fn header_safe(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// Copies `msg` to the DLQ and waits for the stream's ack. The copy keeps
/// the message's headers but those addressed to the server (`Nats-*`: a
/// publish condition such as `Nats-Expected-Stream` would make the DLQ
/// refuse it), and if the letter's headers take it past the server's max
/// payload, its body is dropped (and said to be), so that every message can
/// be dead-lettered.
pub async fn dead_letter(
    js: &jetstream::Context,
    ns: &Namespace,
    msg: &async_nats::Message,
    origin: Origin<'_>,
    error: &str,
) -> Result<(), async_nats::Error> {
    let mut h = async_nats::HeaderMap::new();
    if let Some(original) = &msg.headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            for value in values {
                h.append(name, value.as_str());
            }
        }
    }
    // One letter per message and writer (the durable, or a replay) within
    // the DLQ's duplicate window; the time it was stored tells two messages
    // at one sequence of a stream made again apart.
    h.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!(
            "dlq{}:{}:{}:{}:{}",
            if origin.replay { "-replay" } else { "" },
            origin.consumer,
            origin.stream,
            origin.stream_seq,
            origin.stored_at.timestamp_nanos_opt().unwrap_or_default()
        )
        .as_str(),
    );
    if origin.replay {
        h.insert(headers::REPLAY, "true");
    }
    h.insert(headers::ERROR, header_safe(error, 2000).as_str());
    h.insert(headers::SUBJECT, msg.subject.as_str());
    h.insert(headers::STREAM, origin.stream);
    h.insert(headers::SEQUENCE, origin.stream_seq.to_string().as_str());
    h.insert(headers::DELIVERED, origin.delivered.to_string().as_str());
    h.insert(headers::CONSUMER, origin.consumer);
    h.insert(headers::AT, chrono::Utc::now().to_rfc3339().as_str());
    let subject = ns.dlq_subject(origin.consumer, origin.stream);
    let whole = PublishMessage::build()
        .payload(msg.payload.clone())
        .headers(h.clone());
    let ack = match js.send_publish(subject.clone(), whole).await {
        Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
            h.insert(
                headers::BODY_DROPPED,
                format!("{} bytes", msg.payload.len()).as_str(),
            );
            let headers_only = PublishMessage::build()
                .payload(bytes::Bytes::new())
                .headers(h);
            js.send_publish(subject, headers_only).await?
        }
        sent => sent?,
    };
    ack.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_are_made_single_line() {
        assert_eq!(super::header_safe("a\r\nb\tc", 100), "a  b c");
        assert_eq!(super::header_safe("abcdef", 3), "abc");
    }
}

//! Dead letters: messages that cannot be decoded, are permanently invalid, or
//! kept failing until `max_deliver`. They are copied, with their original
//! headers and body, to the namespace's DLQ stream with headers saying where
//! they came from and why, and only then terminated on their consumer.

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
}

/// Where a dead letter came from.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    pub consumer: &'a str,
    pub stream: &'a str,
    pub stream_seq: u64,
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

/// Copies `msg` to the DLQ and waits for the stream's ack.
pub async fn dead_letter(
    js: &jetstream::Context,
    ns: &Namespace,
    msg: &async_nats::Message,
    origin: Origin<'_>,
    error: &str,
) -> Result<(), async_nats::Error> {
    let mut h = msg.headers.clone().unwrap_or_default();
    // One letter per message and writer (the durable, or a replay) within
    // the DLQ's duplicate window.
    h.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!(
            "dlq{}:{}:{}:{}",
            if origin.replay { "-replay" } else { "" },
            origin.consumer,
            origin.stream,
            origin.stream_seq
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
    let message = PublishMessage::build()
        .payload(msg.payload.clone())
        .headers(h);
    js.send_publish(ns.dlq_subject(origin.consumer, origin.stream), message)
        .await?
        .await?;
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

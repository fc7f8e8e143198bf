//! Reading a stream from a sequence number, in batches, with an ephemeral
//! consumer of its own: never a service's durable, so reading changes
//! nothing for the services that consume the stream.
//!
//! The consumer acks in bulk (ack policy "all": one ack per batch covers
//! every message before it) and is deleted when the reader is done; if the
//! reader dies first, the server drops it after `INACTIVE`.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;

/// How long an abandoned reader's consumer outlives it on the server.
const INACTIVE: Duration = Duration::from_secs(30);
/// How long one fetch waits for messages that are not there.
const FETCH_EXPIRES: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

/// A reader of one stream's messages with sequences in `from..=to`.
pub struct StreamReader {
    stream: jetstream::stream::Stream,
    name: String,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    to: u64,
    /// The stream's first and last sequence when the reader opened.
    pub first: u64,
    pub last: u64,
}

impl StreamReader {
    /// Opens a reader of `stream` from sequence `from` up to `to` (or the
    /// stream's last message as it is now). Messages the stream no longer
    /// holds (past its age limit) are simply not read.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        from: u64,
        to: Option<u64>,
    ) -> Result<Self, ReaderError> {
        let error = |message: String| ReaderError::Stream {
            stream: stream.to_owned(),
            message,
        };
        let mut handle = js
            .get_stream(stream)
            .await
            .map_err(|e| error(e.to_string()))?;
        let state = handle
            .info()
            .await
            .map_err(|e| error(e.to_string()))?
            .state
            .clone();
        let to = to.map_or(state.last_sequence, |t| t.min(state.last_sequence));
        let start = from.max(state.first_sequence).max(1);
        let consumer = if state.messages == 0 || start > to {
            None
        } else {
            let config = pull::Config {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: jetstream::consumer::AckPolicy::All,
                inactive_threshold: INACTIVE,
                max_ack_pending: -1,
                ..Default::default()
            };
            Some(
                handle
                    .create_consumer(config)
                    .await
                    .map_err(|e| error(e.to_string()))?,
            )
        };
        Ok(Self {
            stream: handle,
            name: stream.to_owned(),
            consumer,
            to,
            first: state.first_sequence,
            last: state.last_sequence,
        })
    }

    /// The sequence of the first message `stream` stored at or after `time`
    /// (one past its last message if there is none). The server finds it: a
    /// consumer asked to start at a time starts at that sequence, and says
    /// so before it delivers anything.
    pub async fn seq_at(
        js: &jetstream::Context,
        stream: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, ReaderError> {
        let error = |message: String| ReaderError::Stream {
            stream: stream.to_owned(),
            message,
        };
        let handle = js
            .get_stream(stream)
            .await
            .map_err(|e| error(e.to_string()))?;
        let config = pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time: time },
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: INACTIVE,
            ..Default::default()
        };
        let mut probe = handle
            .create_consumer(config)
            .await
            .map_err(|e| error(e.to_string()))?;
        let info = probe.info().await.map_err(|e| error(e.to_string()))?;
        let (seq, name) = (info.delivered.stream_sequence + 1, info.name.clone());
        if let Err(e) = handle.delete_consumer(&name).await {
            tracing::debug!(stream, error = %e, "probe consumer not deleted; it expires");
        }
        Ok(seq)
    }

    /// The next messages, in sequence order, at most `max`; empty once the
    /// range is read.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<jetstream::Message>, ReaderError> {
        let Some(consumer) = &self.consumer else {
            return Ok(Vec::new());
        };
        let error = |message: String| ReaderError::Stream {
            stream: self.name.clone(),
            message,
        };
        let mut batch = consumer
            .batch()
            .max_messages(max.max(1))
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| error(e.to_string()))?;
        let mut out = Vec::with_capacity(max);
        let mut reached_end = false;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| error(e.to_string()))?;
            let seq = msg
                .info()
                .map_err(|e| error(e.to_string()))?
                .stream_sequence;
            if seq > self.to {
                reached_end = true;
                break;
            }
            reached_end = seq == self.to;
            out.push(msg);
            if reached_end {
                break;
            }
        }
        if let Some(last) = out.last() {
            last.ack_with(AckKind::Ack)
                .await
                .map_err(|e| error(e.to_string()))?;
        }
        if reached_end || out.is_empty() {
            self.close().await;
        }
        Ok(out)
    }

    /// Deletes the reader's consumer (the server would drop it anyway).
    pub async fn close(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let name = consumer.cached_info().name.clone();
            if let Err(e) = self.stream.delete_consumer(&name).await {
                tracing::debug!(stream = %self.name, error = %e, "reader's consumer not deleted; it expires");
            }
        }
    }
}

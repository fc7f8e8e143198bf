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
    /// The stream sequence the next message must be at or after.
    next: u64,
    /// The consumer sequence of the last message this consumer delivered
    /// to the reader (each delivery takes the next one).
    delivered: u64,
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
            Some(consumer_from(&handle, start).await.map_err(error)?)
        };
        Ok(Self {
            stream: handle,
            name: stream.to_owned(),
            consumer,
            next: start,
            delivered: 0,
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
    /// range is read, never before.
    ///
    /// A fetch can come back empty, or short, while the range goes on: the
    /// client gives up on a fetch 5 s after its expiry, and a server that
    /// stalled longer may then deliver to that fetch, which nobody reads
    /// any more (the loss shows as a gap in the consumer's sequence). Then
    /// the reader starts a consumer of its own again just after the last
    /// message it returned, and fetches again. It ends the range only when
    /// its consumer has nothing left to deliver (or delivers past the
    /// range), and fails rather than end early when fetches keep failing or
    /// coming back empty with messages pending. A consumer the server
    /// dropped is replaced the same way.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<jetstream::Message>, ReaderError> {
        let mut fruitless = 0;
        loop {
            let Some(consumer) = &mut self.consumer else {
                return Ok(Vec::new());
            };
            let fetch = match fetch(consumer, max, self.delivered, self.to).await {
                Ok(fetch) => fetch,
                Err(message) => {
                    // The server may have dropped the consumer (it counts
                    // one with no pull waiting as inactive, and the caller
                    // may take longer than INACTIVE over a batch): a new one
                    // starts after the last message returned.
                    self.fruitless(&mut fruitless, &message)?;
                    self.restart().await?;
                    continue;
                }
            };
            self.delivered = fetch.delivered;
            if let Some(last) = fetch.messages.last() {
                self.next = last
                    .info()
                    .map_err(|e| stream_error(&self.name, e.to_string()))?
                    .stream_sequence
                    + 1;
                last.ack_with(AckKind::Ack)
                    .await
                    .map_err(|e| stream_error(&self.name, e.to_string()))?;
            }
            match fetch.end {
                FetchEnd::RangeRead => {
                    self.close().await;
                    return Ok(fetch.messages);
                }
                FetchEnd::Lost => {
                    // What came before the loss is returned; the next fetch
                    // starts again after it.
                    self.restart().await?;
                    if !fetch.messages.is_empty() {
                        return Ok(fetch.messages);
                    }
                }
                FetchEnd::More if !fetch.messages.is_empty() => return Ok(fetch.messages),
                FetchEnd::More => {
                    // Nothing came: the end, unless the consumer still has
                    // messages to deliver (or delivered some that never
                    // arrived).
                    match consumer.info().await {
                        Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {
                            self.close().await;
                            return Ok(Vec::new());
                        }
                        Ok(_) => self.fruitless(
                            &mut fruitless,
                            "fetches came back empty with messages pending: the server is not \
                             delivering them",
                        )?,
                        Err(e) => self.fruitless(&mut fruitless, &e.to_string())?,
                    }
                    self.restart().await?;
                }
            }
        }
    }

    /// Replaces the reader's consumer with a new one that starts just after
    /// the last message returned.
    async fn restart(&mut self) -> Result<(), ReaderError> {
        self.close().await;
        let consumer = consumer_from(&self.stream, self.next)
            .await
            .map_err(|e| self.error(e))?;
        self.consumer = Some(consumer);
        self.delivered = 0;
        Ok(())
    }

    /// Counts one more fetch in a row that got nothing (it failed, or came
    /// back empty short of the range's end); the last of `MAX_FRUITLESS`
    /// fails the read with why.
    fn fruitless(&self, count: &mut u32, why: &str) -> Result<(), ReaderError> {
        *count += 1;
        tracing::debug!(stream = %self.name, next = self.next, attempt = *count, why, "fetch got nothing; the reader starts again");
        if *count >= MAX_FRUITLESS {
            return Err(self.error(format!(
                "{MAX_FRUITLESS} fetches in a row got nothing from seq {}; the last: {why}",
                self.next
            )));
        }
        Ok(())
    }

    fn error(&self, message: impl ToString) -> ReaderError {
        stream_error(&self.name, message)
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

fn stream_error(stream: &str, message: impl ToString) -> ReaderError {
    ReaderError::Stream {
        stream: stream.to_owned(),
        message: message.to_string(),
    }
}

/// Fetches in a row that may fail, or come back empty while messages are
/// pending, before a read fails.
const MAX_FRUITLESS: u32 = 5;

/// A reader's consumer of `stream`, from stream sequence `start`.
async fn consumer_from(
    stream: &jetstream::stream::Stream,
    start: u64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    let config = pull::Config {
        deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: jetstream::consumer::AckPolicy::All,
        inactive_threshold: INACTIVE,
        max_ack_pending: -1,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| e.to_string())
}

/// How a fetch ended.
enum FetchEnd {
    /// The range may go on.
    More,
    /// It reached the end of the range.
    RangeRead,
    /// A message was lost on the way: the consumer sequence jumped.
    Lost,
}

/// What one fetch got.
struct Fetch {
    /// The messages up to the end of the range or a loss, in order.
    messages: Vec<jetstream::Message>,
    /// The consumer sequence of the last message delivered.
    delivered: u64,
    end: FetchEnd,
}

/// One fetch of at most `max` messages from `consumer`, whose last delivery
/// to the reader was `delivered`, of a range ending at `to`.
async fn fetch(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    max: usize,
    mut delivered: u64,
    to: u64,
) -> Result<Fetch, String> {
    let mut batch = consumer
        .batch()
        .max_messages(max.max(1))
        .expires(FETCH_EXPIRES)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = Vec::with_capacity(max);
    let mut end = FetchEnd::More;
    while let Some(msg) = batch.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let info = msg.info().map_err(|e| e.to_string())?;
        if info.consumer_sequence != delivered + 1 {
            end = FetchEnd::Lost;
            break;
        }
        delivered = info.consumer_sequence;
        if info.stream_sequence > to {
            end = FetchEnd::RangeRead;
            break;
        }
        let last = info.stream_sequence == to;
        messages.push(msg);
        if last {
            end = FetchEnd::RangeRead;
            break;
        }
    }
    Ok(Fetch {
        messages,
        delivered,
        end,
    })
}

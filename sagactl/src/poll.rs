//! Waiting on a condition: look, and look again a little later, until it
//! holds or time runs out. The one polling loop of the CLI and of the test
//! harness.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// How to poll: how often and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    every: Duration,
    timeout: Duration,
    missed: MissedTickBehavior,
}

impl Poll {
    /// A look every `every` (after a slow look the next comes at once, to
    /// keep the pace), and no new look once `timeout` has passed.
    pub fn new(every: Duration, timeout: Duration) -> Self {
        Self {
            every,
            timeout,
            missed: MissedTickBehavior::Burst,
        }
    }

    /// Looks kept `every` apart, even after a slow one.
    pub fn spaced(self) -> Self {
        Self {
            missed: MissedTickBehavior::Delay,
            ..self
        }
    }

    /// Looks (the first at once) until one finds what it looks for.
    ///
    /// Each look gets what the one before it left (`first` for the first
    /// look: a count, the last reading...) and either breaks with what it
    /// found or continues, leaving something for the next. The answer is
    /// `Break` with what was found, or `Continue` with what the last look
    /// left once `timeout` has passed. An error of a look ends the wait with
    /// that error.
    pub async fn until<T, S, F, Fut>(
        self,
        first: S,
        mut look: F,
    ) -> anyhow::Result<ControlFlow<T, S>>
    where
        F: FnMut(S) -> Fut,
        Fut: Future<Output = anyhow::Result<ControlFlow<T, S>>>,
    {
        let started = Instant::now();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(self.missed);
        let mut left = first;
        loop {
            tick.tick().await;
            match look(left).await? {
                ControlFlow::Break(found) => return Ok(ControlFlow::Break(found)),
                ControlFlow::Continue(rest) => left = rest,
            }
            if started.elapsed() > self.timeout {
                return Ok(ControlFlow::Continue(left));
            }
        }
    }
}

/// Looks every 20 ms until `look` finds something; an error naming `what`
/// once `timeout` has passed.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut look: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let polled = Poll::new(Duration::from_millis(20), timeout)
        .until((), |()| {
            let found = look();
            async move {
                Ok(match found.await? {
                    Some(found) => ControlFlow::Break(found),
                    None => ControlFlow::Continue(()),
                })
            }
        })
        .await?;
    match polled {
        ControlFlow::Break(found) => Ok(found),
        ControlFlow::Continue(()) => {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;
    use std::time::Duration;

    use super::{Poll, poll_until};

    #[tokio::test]
    async fn a_poll_returns_what_it_found_or_what_the_last_look_left() {
        let found = Poll::new(Duration::from_millis(1), Duration::from_secs(10))
            .until(0, |looks| async move {
                Ok(if looks == 2 {
                    ControlFlow::Break(looks + 1)
                } else {
                    ControlFlow::Continue(looks + 1)
                })
            })
            .await
            .unwrap();
        assert_eq!(found, ControlFlow::Break(3));

        let never = Poll::new(Duration::from_millis(10), Duration::from_millis(50))
            .spaced()
            .until(0, |looks| async move {
                Ok(ControlFlow::<(), _>::Continue(looks + 1))
            })
            .await
            .unwrap();
        assert!(matches!(never, ControlFlow::Continue(n) if n > 1));

        let e = poll_until("nothing", Duration::from_millis(50), || async {
            Ok(None::<()>)
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "timed out after 50ms waiting for nothing");
    }
}

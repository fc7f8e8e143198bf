//! A steady load of orders for tests that break things while it runs:
//! clients placing orders at a pace until told to stop, each order retried
//! with its idempotency key (on the next order instance, when there are
//! several) until it is taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use saga_shared::proto::order::v1::PlaceOrderRequest;
use sagactl::client::Clients;
use tonic::Code;
use uuid::Uuid;

use crate::eventually;

/// How long one order may go untaken before the load gives up.
const TAKE_WITHIN: Duration = Duration::from_secs(120);

/// Makes the next order of a worker from its random numbers.
pub type MakeOrder = Arc<dyn Fn(&mut StdRng) -> PlaceOrderRequest + Send + Sync>;

/// Clients placing orders until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    placed: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<String>>>>,
}

impl Load {
    /// `workers` clients, each placing an order made by `make` every
    /// `pace`, through the order services of `clients` in turn. A call
    /// refused as invalid (or naming something unknown) fails the load; any
    /// other failure is retried every 100 ms for up to two minutes.
    pub fn start(
        clients: &[Clients],
        workers: usize,
        pace: Duration,
        seed: u64,
        make: MakeOrder,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let placed = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|w| {
                let mut order: Vec<_> = clients.iter().map(|c| c.order.clone()).collect();
                let (stop, placed, make) = (stop.clone(), placed.clone(), make.clone());
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
                    let mut ids = Vec::new();
                    let mut tick = tokio::time::interval(pace);
                    let mut next = w;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let request = make(&mut rng);
                        let key = Uuid::new_v4().to_string();
                        let started = Instant::now();
                        let mut retry = tokio::time::interval(Duration::from_millis(100));
                        let taken = loop {
                            next += 1;
                            let mut call = tonic::Request::new(request.clone());
                            call.metadata_mut().insert("idempotency-key", key.parse()?);
                            let instances = order.len();
                            match order[next % instances].place_order(call).await {
                                Ok(r) => break r.into_inner().order.unwrap_or_default(),
                                Err(s)
                                    if matches!(
                                        s.code(),
                                        Code::InvalidArgument | Code::NotFound
                                    ) =>
                                {
                                    anyhow::bail!("a valid order was refused: {s:?}");
                                }
                                Err(s) if started.elapsed() > TAKE_WITHIN => {
                                    anyhow::bail!("order not taken within {TAKE_WITHIN:?}: {s:?}");
                                }
                                Err(_) => {
                                    retry.tick().await;
                                }
                            }
                        };
                        ids.push(taken.order_id);
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(ids)
                })
            })
            .collect();
        Self {
            stop,
            placed,
            workers,
        }
    }

    /// Orders taken so far.
    pub fn placed(&self) -> usize {
        self.placed.load(Ordering::Relaxed)
    }

    /// Waits until `n` orders were taken (two minutes at most).
    pub async fn wait_placed(&self, n: usize) -> anyhow::Result<()> {
        eventually(&format!("{n} orders placed"), TAKE_WITHIN, || async {
            Ok(self.placed() >= n)
        })
        .await
    }

    /// Stops the clients: the ids of every order taken.
    pub async fn stop(self) -> anyhow::Result<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ids = Vec::new();
        for w in self.workers {
            ids.extend(w.await??);
        }
        Ok(ids)
    }
}

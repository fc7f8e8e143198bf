//! Asks inventory and reservation whether the SKUs and slot of a new order
//! exist, so that an order naming unknown ones is refused before anything is
//! stored. Positive answers are remembered for a while (SKUs and slots are
//! never deleted); negative ones are not.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use saga_shared::auth::WithToken;
use saga_shared::proto::inventory::v1::ListStockRequest;
use saga_shared::proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use saga_shared::proto::reservation::v1::GetSlotRequest;
use saga_shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};
use uuid::Uuid;

type Traced = InterceptedService<Channel, WithToken>;

/// Why the catalog could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{service} is unavailable ({code:?}: {message}); retry later")]
    Unavailable {
        service: &'static str,
        code: Code,
        message: String,
    },
    /// Refused for a reason a retry does not change: order-svc's service
    /// token or settings are wrong.
    #[error(
        "{service} refused order-svc's check ({code:?}: {message}); check order-svc's \
         service token and settings"
    )]
    Refused {
        service: &'static str,
        code: Code,
        message: String,
    },
    #[error("{0} URL is invalid: {1}")]
    Url(&'static str, String),
}

struct Seen<K> {
    ttl: Duration,
    entries: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash + Clone> Seen<K> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn knows(&self, k: &K) -> bool {
        let entries = self.entries.lock().expect("catalog cache lock poisoned");
        entries.get(k).is_some_and(|t| t.elapsed() < self.ttl)
    }

    fn remember(&self, keys: impl IntoIterator<Item = K>) {
        let mut entries = self.entries.lock().expect("catalog cache lock poisoned");
        if entries.len() > 100_000 {
            entries.retain(|_, t| t.elapsed() < self.ttl);
        }
        let now = Instant::now();
        for k in keys {
            entries.insert(k, now);
        }
    }
}

pub struct Catalog {
    inventory: InventoryServiceClient<Traced>,
    reservation: ReservationServiceClient<Traced>,
    skus: Seen<String>,
    slots: Seen<Uuid>,
}

fn channel(
    name: &'static str,
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, CatalogError> {
    Ok(saga_shared::grpc::endpoint(name, url, tls)
        .map_err(|e| CatalogError::Url(name, e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Why `service` did not answer a check: unavailable for now (a retry may
/// be answered), or refused for good.
fn failed_check(service: &'static str, s: &Status) -> CatalogError {
    let (code, message) = (s.code(), s.message().to_owned());
    match code {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::Unimplemented
        | Code::NotFound
        | Code::AlreadyExists => CatalogError::Refused {
            service,
            code,
            message,
        },
        _ => CatalogError::Unavailable {
            service,
            code,
            message,
        },
    }
}

impl Catalog {
    pub fn new(
        inventory_url: &str,
        reservation_url: &str,
        ttl: Duration,
        caller: WithToken,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Self, CatalogError> {
        Ok(Self {
            inventory: InventoryServiceClient::with_interceptor(
                channel("order.inventory_url", inventory_url, tls)?,
                caller.clone(),
            ),
            reservation: ReservationServiceClient::with_interceptor(
                channel("order.reservation_url", reservation_url, tls)?,
                caller,
            ),
            skus: Seen::new(ttl),
            slots: Seen::new(ttl),
        })
    }

    /// The SKUs among `skus` that inventory does not know.
    pub async fn unknown_skus(&self, skus: &[&str]) -> Result<HashSet<String>, CatalogError> {
        let ask: Vec<String> = skus
            .iter()
            .map(|s| (*s).to_owned())
            .filter(|s| !self.skus.knows(s))
            .collect();
        if ask.is_empty() {
            return Ok(HashSet::new());
        }
        let found = self
            .inventory
            .clone()
            .list_stock(ListStockRequest {
                skus: ask.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| failed_check("inventory", &s))?
            .into_inner()
            .stocks;
        let found: HashSet<String> = found.into_iter().map(|s| s.sku).collect();
        self.skus.remember(found.iter().cloned());
        Ok(ask.into_iter().filter(|s| !found.contains(s)).collect())
    }

    /// Whether reservation knows the slot.
    pub async fn slot_exists(&self, slot: Uuid) -> Result<bool, CatalogError> {
        if self.slots.knows(&slot) {
            return Ok(true);
        }
        match self
            .reservation
            .clone()
            .get_slot(GetSlotRequest {
                slot_id: slot.to_string(),
            })
            .await
        {
            Ok(_) => {
                self.slots.remember([slot]);
                Ok(true)
            }
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(failed_check("reservation", &s)),
        }
    }
}

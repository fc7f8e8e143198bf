//! The four services in one process: what `sagactl up` runs and what the
//! integration tests start. Each service is the very same `build` + `run`
//! its own binary uses.

use std::net::SocketAddr;

use anyhow::Context;
use inventory_svc::InventoryConfig;
use order_svc::OrderConfig;
use payment_svc::PaymentConfig;
use reservation_svc::ReservationConfig;
use saga_shared::auth::{AuthConfig, Minter};
use saga_shared::config::{BusConfig, DatabaseConfig, NatsConfig, RepairConfig};
use saga_shared::runtime::{App, PlatformError};
use saga_shared::service::Service;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The four services' settings.
#[derive(Clone, Debug, Default)]
pub struct SystemConfig {
    pub order: OrderConfig,
    pub inventory: InventoryConfig,
    pub payment: PaymentConfig,
    pub reservation: ReservationConfig,
}

impl SystemConfig {
    /// Each service's defaults and environment (`ORDER_SVC__*`, ...), the same
    /// names the service binaries read.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            order: OrderConfig::load(None).context("order-svc configuration")?,
            inventory: InventoryConfig::load(None).context("inventory-svc configuration")?,
            payment: PaymentConfig::load(None).context("payment-svc configuration")?,
            reservation: ReservationConfig::load(None).context("reservation-svc configuration")?,
        })
    }

    /// Puts every service in `namespace`.
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        self.order.namespace = namespace.to_owned();
        self.inventory.namespace = namespace.to_owned();
        self.payment.namespace = namespace.to_owned();
        self.reservation.namespace = namespace.to_owned();
        self
    }

    /// The auth section of each service.
    pub fn auths(&self) -> [&AuthConfig; 4] {
        [
            &self.order.auth,
            &self.inventory.auth,
            &self.payment.auth,
            &self.reservation.auth,
        ]
    }

    /// Gives every service the same auth settings.
    pub fn with_auth(mut self, auth: &AuthConfig) -> Self {
        for a in [
            &mut self.order.auth,
            &mut self.inventory.auth,
            &mut self.payment.auth,
            &mut self.reservation.auth,
        ] {
            *a = auth.clone();
        }
        self
    }

    /// Gives every service a fresh random secret, for a system of a test's
    /// or a benchmark's own; the minter makes the tokens its callers send.
    pub fn with_own_secret(self) -> anyhow::Result<(Self, Minter)> {
        let auth = AuthConfig::with_secret(&saga_shared::auth::random_secret());
        let minter = Minter::from_config(&auth)?;
        Ok((self.with_auth(&auth), minter))
    }

    /// Points every service at one database URL.
    pub fn with_database_url(mut self, url: &str) -> Self {
        for db in self.databases_mut() {
            db.url = url.to_owned();
        }
        self
    }

    /// The database section of each service.
    pub fn databases(&self) -> [&DatabaseConfig; 4] {
        [
            &self.order.database,
            &self.inventory.database,
            &self.payment.database,
            &self.reservation.database,
        ]
    }

    /// The database section of each service, to change.
    pub fn databases_mut(&mut self) -> [&mut DatabaseConfig; 4] {
        [
            &mut self.order.database,
            &mut self.inventory.database,
            &mut self.payment.database,
            &mut self.reservation.database,
        ]
    }

    /// The NATS section of each service.
    pub fn nats_mut(&mut self) -> [&mut NatsConfig; 4] {
        [
            &mut self.order.nats,
            &mut self.inventory.nats,
            &mut self.payment.nats,
            &mut self.reservation.nats,
        ]
    }

    /// The bus section of each service.
    pub fn buses_mut(&mut self) -> [&mut BusConfig; 4] {
        [
            &mut self.order.bus,
            &mut self.inventory.bus,
            &mut self.payment.bus,
            &mut self.reservation.bus,
        ]
    }

    /// The bus sections of the participants (inventory, payment,
    /// reservation).
    pub fn participant_buses_mut(&mut self) -> [&mut BusConfig; 3] {
        [
            &mut self.inventory.bus,
            &mut self.payment.bus,
            &mut self.reservation.bus,
        ]
    }

    /// The repair section of each participant.
    pub fn repairs_mut(&mut self) -> [&mut RepairConfig; 3] {
        [
            &mut self.inventory.repair,
            &mut self.payment.repair,
            &mut self.reservation.repair,
        ]
    }

    /// Points the participants' repair loops at order-svc.
    pub fn point_repair_at(&mut self, order_url: &str) {
        for repair in self.repairs_mut() {
            repair.order_url = order_url.to_owned();
        }
    }

    /// Binds every listener to a free port.
    pub fn with_free_ports(mut self) -> Self {
        let any = || saga_shared::config::ListenConfig::on_port(0);
        for (grpc, admin) in [
            (&mut self.order.grpc, &mut self.order.admin),
            (&mut self.inventory.grpc, &mut self.inventory.admin),
            (&mut self.payment.grpc, &mut self.payment.admin),
            (&mut self.reservation.grpc, &mut self.reservation.admin),
        ] {
            grpc.listen = any().listen;
            *admin = any();
        }
        self
    }
}

/// Where one service listens.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Whether gRPC is served over TLS.
    pub tls: bool,
}

impl Endpoints {
    fn of(app: &App) -> Self {
        Self {
            grpc: app.grpc_addr(),
            admin: app.admin_addr(),
            tls: app.grpc_url().starts_with("https"),
        }
    }

    pub fn grpc_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc)
    }
}

/// The running services.
pub struct System {
    pub order: Endpoints,
    pub inventory: Endpoints,
    pub payment: Endpoints,
    pub reservation: Endpoints,
    stop: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), PlatformError>)>,
}

impl System {
    /// Builds the services (migrations, streams, listeners) and runs them.
    /// Every service binds its listeners first; then order-svc is pointed
    /// at where inventory and reservation listen, and the participants'
    /// repair loops at where order-svc listens.
    pub async fn start(mut cfg: SystemConfig) -> anyhow::Result<Self> {
        let inventory = inventory_svc::InventorySvc::connect(&cfg.inventory)
            .await
            .context("starting inventory-svc")?;
        let reservation = reservation_svc::ReservationSvc::connect(&cfg.reservation)
            .await
            .context("starting reservation-svc")?;
        let payment = payment_svc::PaymentSvc::connect(&cfg.payment)
            .await
            .context("starting payment-svc")?;
        let order = order_svc::OrderSvc::connect(&cfg.order)
            .await
            .context("starting order-svc")?;
        cfg.order.order.inventory_url = inventory.grpc_url();
        cfg.order.order.reservation_url = reservation.grpc_url();
        cfg.point_repair_at(&order.grpc_url());
        let inventory = inventory_svc::InventorySvc::assemble(inventory, cfg.inventory)
            .await
            .context("starting inventory-svc")?;
        let reservation = reservation_svc::ReservationSvc::assemble(reservation, cfg.reservation)
            .await
            .context("starting reservation-svc")?;
        let payment = payment_svc::PaymentSvc::assemble(payment, cfg.payment)
            .await
            .context("starting payment-svc")?;
        let order = order_svc::OrderSvc::assemble(order, cfg.order)
            .await
            .context("starting order-svc")?;

        let stop = CancellationToken::new();
        let mut system = System {
            order: Endpoints::of(&order),
            inventory: Endpoints::of(&inventory),
            payment: Endpoints::of(&payment),
            reservation: Endpoints::of(&reservation),
            stop: stop.clone(),
            tasks: JoinSet::new(),
        };
        for app in [order, inventory, payment, reservation] {
            let name = app.service();
            let token = stop.clone();
            system
                .tasks
                .spawn(async move { (name, app.run(token.cancelled_owned()).await) });
        }
        Ok(system)
    }

    /// Resolves when a service stops on its own (an error), naming it.
    pub async fn exited(&mut self) -> Option<(&'static str, Result<(), PlatformError>)> {
        match self.tasks.join_next().await {
            Some(Ok(done)) => Some(done),
            Some(Err(e)) => Some((
                "a service task",
                Err(PlatformError::Admin(std::io::Error::other(e))),
            )),
            None => None,
        }
    }

    /// Stops every service in order and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut first_error = None;
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => {
                    first_error.get_or_insert(anyhow::anyhow!("{name}: {e}"));
                }
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("service task: {e}"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

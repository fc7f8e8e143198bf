//! The integration-test harness.
//!
//! [`TestSystem::start`] gives each test its own world on the real servers: a
//! fresh Postgres database (one schema per service, as in production), a
//! unique namespace for JetStream streams, subjects and Redis keys, and the
//! four services running in this process on free ports, exactly as
//! `sagactl up` runs them. It offers one typed helper per call the tests
//! need, waits on conditions with deadlines, and checks the system's
//! invariants straight from the services' databases and Redis. Everything
//! it created is removed when it stops (or is dropped).
//!
//! - [`system`]: the [`TestSystem`], its start, stop and clean-up;
//! - [`calls`]: one helper per call (through `sagactl`'s typed client
//!   calls), and the requests and answers they use;
//! - [`wait`]: waiting on conditions with a deadline;
//! - [`inspect`]: looks straight into the stores and the bus, and the
//!   invariants;
//! - [`snapshot`]: a comparable picture of the business state;
//! - [`processes`], [`servers`], [`ports`]: services and servers as
//!   processes of a test's own;
//! - [`http`]: GET on the admin endpoints.

pub use saga_shared;
pub use sagactl;

pub mod blackhole;
pub mod calls;
pub mod clusters;
pub mod http;
pub mod inspect;
pub mod load;
pub mod ports;
pub mod processes;
pub mod servers;
pub mod snapshot;
pub mod system;
pub mod tls;
pub mod wait;

pub use calls::{CONFIRMED_WITH_SLOT, order_request, reason, state};
pub use http::{http_get, metric_sum};
pub use inspect::CONSUMERS;
pub use sagactl::client::is_terminal;
pub use snapshot::Snapshot;
pub use system::{TestSystem, connect_to_schema, pg_base};
pub use wait::{Poll, eventually, poll_until};

//! Ports for servers a test starts as separate processes (services,
//! redis-server, nats-server), chosen before the process binds them.
//!
//! A port the kernel hands out for `bind(0)` sits in the ephemeral range,
//! where any outgoing connection of the tests running beside this one may
//! take it between the choice and the child's bind (and every restart of a
//! killed server reopens that window). So ports are drawn below the
//! ephemeral range, never twice in one test binary, and checked free.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use rand::Rng;

/// Drawn from here: below Linux's default ephemeral range (32768-60999)
/// and above the well-known services.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port no other test of this binary has, free right now.
pub fn free_port() -> anyhow::Result<u16> {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(RANGE);
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {RANGE:?} after 1000 tries")
}

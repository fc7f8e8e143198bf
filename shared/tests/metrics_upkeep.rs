//! The Prometheus recorder keeps each histogram sample until upkeep drains
//! it into the buckets. A service that nobody scrapes must still drain
//! them, or its memory grows with every event it handles.
//!
//! Its own test binary: the allocator below counts every live byte of the
//! process, and no other test may allocate beside it.

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, process-wide.
fn live() -> isize {
    let stats = INSTRUMENTED_SYSTEM.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

const SAMPLES: u32 = 1_000_000;
const MIB: isize = 1 << 20;

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    saga_shared::telemetry::prometheus();
    let histogram = metrics::histogram!("upkeep_test_seconds");
    let before = live();
    for i in 0..SAMPLES {
        histogram.record(f64::from(i % 1_000) / 1_000.0);
    }
    let held = live() - before;
    assert!(
        held > 4 * MIB,
        "a million samples are held until drained ({held} bytes)"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = live() - before;
        if left < MIB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} bytes of samples still held after 60 s without a scrape"
        );
        // A live service goes on recording: each drain then also frees
        // what the one before it took out (the buckets free their blocks
        // through epoch-based reclamation).
        histogram.record(0.5);
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

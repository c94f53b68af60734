//! Process-wide proxy counters (the Prometheus exposition comes with the observability work).

use std::sync::atomic::AtomicU64;

/// Leaf certificates minted.
pub static LEAVES_MINTED: AtomicU64 = AtomicU64::new(0);
/// CONNECT tunnels currently open.
pub static OPEN_TUNNELS: AtomicU64 = AtomicU64::new(0);

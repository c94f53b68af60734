//! The chaos TCP proxy the Redis suites put in front of the test Redis (one implementation, in
//! `crate::testing::chaos`, shared with the DLQ and end-to-end suites).

pub(super) use crate::testing::chaos::{ChaosProxy, Mode};

//! End-to-end test support: fake providers (real HTTP/HTTPS servers on loopback that record what
//! they receive and can be told to fail, stall or throttle), a test CA, a hub started in-process
//! on ephemeral ports, and a log capture every test can search for secrets.

pub mod client;
pub mod fake;
pub mod h2fake;
pub mod harness;
pub mod idp;
pub mod logs;
pub mod raw;

pub use fake::{FakeProvider, Mode, Recorded};
pub use h2fake::{H2Mode, H2Provider, H2Recorded};
pub use harness::{Backend, HubBuilder, TestHub, TestPki};
pub use idp::FakeIdp;

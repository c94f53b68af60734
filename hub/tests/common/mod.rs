//! Helpers shared by the tests that run the real `hub` binary.

use std::net::TcpListener;

/// `N` distinct free ports (all held until all are chosen, so none is handed out twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub mod process;

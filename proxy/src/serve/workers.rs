//! The proxy's connection threads: one single-threaded tokio runtime per thread, no work
//! stealing (Pingora's own `NoSteal` model). A connection lives on one thread from accept to
//! close, so a request's wake-ups stay on the thread that reads its socket instead of waking an
//! idle worker to steal it; the benchmark profile had scheduling as a tenth of the proxy's CPU
//! with tokio's work-stealing pool. Connections are dealt round-robin.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A fixed set of single-threaded runtimes.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping a sender ends its thread's runtime (its tasks are dropped).
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `threads` (at least one) threads named `hub-proxy-N`.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(threads.max(1));
        let mut stop = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("hub-proxy-{i}"))
                .spawn(move || {
                    // Runs the spawned connections until the pool is dropped.
                    let _ = rt.block_on(rx);
                })?;
            stop.push(tx);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// Runs `task` on the next thread.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[tokio::test]
    async fn tasks_are_dealt_round_robin_each_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (tx, rx) = oneshot::channel();
            workers.spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
            seen.push(rx.await.unwrap().unwrap());
        }
        assert_eq!(seen[..3], seen[3..], "round-robin: {seen:?}");
        let distinct: HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|n| n.starts_with("hub-proxy-")));
    }

    #[test]
    fn dropping_the_pool_ends_its_threads_tasks() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            // Holds the sender until the runtime drops this task.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the task (and its sender) is dropped with the runtime"
        );
    }
}

//! Graceful shutdown: on SIGTERM the server stops being ready at once but keeps accepting
//! (so Kubernetes takes the endpoint out of its Service before the port closes), refuses new
//! generation with 503, lets running answers finish within the grace period, then ends the
//! streams still open with an error event and `[DONE]` before the listener closes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, Stream, StreamExt};
use tokio::sync::{watch, Notify};

#[derive(Debug)]
struct Inner {
    draining: AtomicBool,
    active: AtomicUsize,
    idle: Notify,
    /// True once the grace period is over: open streams end now.
    cut: watch::Sender<bool>,
}

/// The server's drain state, shared by every request.
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                draining: AtomicBool::new(false),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                cut: watch::Sender::new(false),
            }),
        }
    }
}

/// Counts one answer in progress (a request, or an open stream) until dropped.
#[derive(Debug)]
pub struct Active {
    inner: Arc<Inner>,
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// A new answer, unless the server is draining.
    pub fn start(&self) -> Option<Active> {
        if self.is_draining() {
            return None;
        }
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Some(Active {
            inner: self.inner.clone(),
        })
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Stops readiness and new generation; waits up to `grace` for running answers, then
    /// cuts the streams still open and waits (briefly) for them to close.
    pub async fn run(&self, grace: Duration) {
        self.inner.draining.store(true, Ordering::Release);
        tracing::info!(
            active = self.active(),
            grace_s = grace.as_secs_f64(),
            "draining"
        );
        if tokio::time::timeout(grace, self.idle()).await.is_err() {
            tracing::warn!(
                active = self.active(),
                "grace period over; ending the streams still open"
            );
            self.inner.cut.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.idle()).await;
        }
    }

    async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// `events` until the grace period ends, then `closing` (an error event and `[DONE]`).
    /// The stream counts as an active answer while it lasts.
    pub fn guard_stream<T: Send + 'static>(
        &self,
        events: impl Stream<Item = T> + Send + 'static,
        closing: Vec<T>,
    ) -> impl Stream<Item = T> + Send + 'static {
        let active = self.start();
        let cut = self.inner.cut.subscribe();
        let start = (Box::pin(events), cut, Some(closing), active);
        stream::unfold(start, |(mut events, mut cut, closing, active)| async move {
            let closing = closing?;
            let grace_over = async {
                if cut.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                () = grace_over => Some((closing, (events, cut, None, active))),
                item = events.next() => {
                    let item = item?;
                    Some((vec![item], (events, cut, Some(closing), active)))
                }
            }
        })
        .flat_map(stream::iter)
    }
}

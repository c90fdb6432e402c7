//! A streamed miss's pump, driven by the client's own body: the client's connection task
//! polls the pump before each read, so a chunk crosses no extra task on its way out (under
//! load every hand-off between tasks waits its turn for a core). The pump moves onto a task
//! of its own when it must not depend on the client: the client left, or a twin started
//! waiting for the answer (it must then read ahead of a client that reads slowly).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use parking_lot::Mutex;
use tokio::runtime::Handle;

type Pump = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct State {
    pump: Option<Pump>,
    detached: bool,
}

/// Where the pump lives until it finishes or is detached.
pub(super) struct PumpSlot {
    state: Arc<Mutex<State>>,
    runtime: Handle,
}

/// Moves the pump onto its own task (at once, or as soon as it is in its slot).
pub(super) struct Detach {
    state: Weak<Mutex<State>>,
    runtime: Handle,
}

impl PumpSlot {
    pub(super) fn new() -> PumpSlot {
        PumpSlot {
            state: Arc::default(),
            runtime: Handle::current(),
        }
    }

    pub(super) fn detacher(&self) -> Detach {
        Detach {
            state: Arc::downgrade(&self.state),
            runtime: self.runtime.clone(),
        }
    }

    /// Moves the pump onto its own task (at once, or as soon as it is in its slot).
    pub(super) fn detach(&self) {
        detach(&mut self.state.lock(), &self.runtime);
    }

    /// The body that drives `pump` (unless detached) and yields what it hands to `items`.
    pub(super) fn drive<S>(
        self,
        pump: impl Future<Output = ()> + Send + 'static,
        items: S,
    ) -> Driven<S> {
        {
            let mut state = self.state.lock();
            if state.detached {
                self.runtime.spawn(pump);
            } else {
                state.pump = Some(Box::pin(pump));
            }
        }
        Driven { slot: self, items }
    }
}

impl Detach {
    pub(super) fn now(&self) {
        if let Some(state) = self.state.upgrade() {
            detach(&mut state.lock(), &self.runtime);
        }
    }
}

fn detach(state: &mut State, runtime: &Handle) {
    state.detached = true;
    if let Some(pump) = state.pump.take() {
        runtime.spawn(pump);
    }
}

/// The client's body: polls the pump (while it is attached), then yields the next item.
pub(super) struct Driven<S> {
    slot: PumpSlot,
    items: S,
}

impl<S: Stream + Unpin> Stream for Driven<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        {
            let mut state = this.slot.state.lock();
            if let Some(pump) = &mut state.pump
                && pump.as_mut().poll(cx).is_ready()
            {
                state.pump = None;
            }
        }
        Pin::new(&mut this.items).poll_next(cx)
    }
}

impl<S> Drop for Driven<S> {
    fn drop(&mut self) {
        // The client left early: the pump finishes (or notices) on its own.
        self.slot.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::sync::{mpsc, oneshot};

    /// A pump that hands `n` numbers over, then reports that it finished.
    async fn pump(n: u32, tx: mpsc::UnboundedSender<u32>, done: oneshot::Sender<()>) {
        for i in 0..n {
            let _ = tx.send(i);
            tokio::task::yield_now().await;
        }
        let _ = done.send(());
    }

    #[tokio::test]
    async fn the_body_drives_its_pump() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel();
        let slot = PumpSlot::new();
        let items = tokio_stream_of(rx);
        let body = slot.drive(pump(3, tx, done), items);
        let got: Vec<u32> = body.collect().await;
        assert_eq!(got, vec![0, 1, 2]);
        finished.await.expect("the pump ran to its end");
    }

    #[tokio::test]
    async fn a_detached_or_abandoned_pump_runs_on_its_own() {
        for abandoned in [false, true] {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done, finished) = oneshot::channel();
            let slot = PumpSlot::new();
            let detach = slot.detacher();
            let body = slot.drive(pump(1000, tx, done), tokio_stream_of(rx));
            if abandoned {
                drop(body);
            } else {
                detach.now();
            }
            // Nobody polls a body here: only the pump's own task can finish it.
            tokio::time::timeout(std::time::Duration::from_secs(10), finished)
                .await
                .expect("the pump finished without its body")
                .expect("the pump ran to its end");
        }
    }

    #[tokio::test]
    async fn a_detach_asked_for_before_the_pump_arrives_spawns_it() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel();
        let slot = PumpSlot::new();
        slot.detach();
        let _body = slot.drive(pump(1, tx, done), futures_util::stream::empty::<u32>());
        tokio::time::timeout(std::time::Duration::from_secs(10), finished)
            .await
            .expect("the pump finished without its body being polled")
            .expect("the pump ran to its end");
    }

    fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<u32>) -> impl Stream<Item = u32> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

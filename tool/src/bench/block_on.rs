//! The smallest executor: runs one future on the calling thread, parking it between
//! wake-ups. What a current-thread runtime (Tokio's, say) does around an `.await` that
//! is not ready, without the runtime: C1 times an async caller's durable append with it.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::thread::Thread;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` to completion on this thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake-up that came before this park makes it return at once.
        std::thread::park();
    }
}

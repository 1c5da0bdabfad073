//! Interrupted uploads kept for resumption ([`Parked`]), each for an idle lifetime.
//!
//! A parked upload holds an open write (on S3, a multipart upload) and its quota reservation.
//! One that is not resumed within the lifetime is dropped — which aborts the write and releases
//! the reservation — so abandoned uploads cannot exhaust the quota. Expiry is checked on every
//! access and, for uploads nobody asks about again, by a sweep every quarter lifetime
//! ([`Parked::sweep_every`]). Beyond the capacity, the least recently parked go first.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use moka::sync::Cache;

/// Uploads parked by key, each dropped after `lifetime` without use.
#[derive(Clone)]
pub struct Parked<T> {
    uploads: Cache<String, Arc<Mutex<Option<T>>>>,
    lifetime: Duration,
}

impl<T> std::fmt::Debug for Parked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("uploads", &self.uploads.entry_count())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl<T: Send + 'static> Parked<T> {
    /// At most `capacity` uploads, each kept for `lifetime` after it was parked.
    pub fn new(capacity: u64, lifetime: Duration) -> Self {
        Parked {
            uploads: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(lifetime)
                .build(),
            lifetime,
        }
    }

    /// Keeps `upload` under `key` (replacing, and so dropping, any other under it).
    pub fn park(&self, key: String, upload: T) {
        self.uploads.insert(key, Arc::new(Mutex::new(Some(upload))));
    }

    /// Takes the upload parked under `key`, if it has not expired.
    pub fn take(&self, key: &str) -> Option<T> {
        let slot = self.uploads.remove(key)?;
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.take()
    }

    /// Looks at the upload parked under `key`, if it has not expired (it stays parked).
    pub fn peek<R>(&self, key: &str, look: impl FnOnce(&T) -> R) -> Option<R> {
        let slot = self.uploads.get(key)?;
        let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(look)
    }

    /// Drops every expired upload now.
    pub fn sweep(&self) {
        self.uploads.run_pending_tasks();
    }

    /// Sweeps every quarter lifetime (at least once a second) on the current runtime, for as
    /// long as `parked` lives.
    pub fn sweep_every(parked: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(parked);
        let period = (parked.lifetime / 4).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(parked) = weak.upgrade() else { return };
                parked.sweep();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts how many of its values were dropped.
    struct Tracked(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_upload_resumed_in_time_is_there_and_an_abandoned_one_is_dropped() {
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let parked = Arc::new(Parked::new(16, Duration::from_millis(300)));
        parked.park("resumed".into(), Tracked(dropped.clone()));
        parked.park("abandoned".into(), Tracked(dropped.clone()));
        assert!(parked.peek("resumed", |_| ()).is_some());
        let resumed = parked.take("resumed");
        assert!(resumed.is_some());
        assert!(parked.take("resumed").is_none(), "taken once");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(parked.peek("abandoned", |_| ()).is_none(), "expired");
        parked.sweep();
        assert_eq!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the abandoned one was dropped"
        );
        drop(resumed);
        assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

//! How many requests the client keeps in flight: found by measuring throughput, not fixed. A
//! fast server (casket) takes many requests at once; a Python server (BuildStream 1's) slows
//! down under concurrency: a 10,000-file push sent as 16 requests at once took 2.2× as long
//! there as one at a time.
//!
//! Once per round the round's throughput is estimated by Little's law from the requests that
//! move blobs sent since the round began: their mean bytes in flight over their mean latency.
//! So requests sent under an earlier limit, the time a new limit takes to fill, and a mix of
//! small and large requests do not blur it. Requests that move no blobs (FindMissingBlobs,
//! capabilities) take a place but are not measured: per byte they cost a server fifty times
//! what a batch does, and a round of them next to a round of batches compared nothing.
//! * **Slow start.** The first requests go one at a time (the very first is not measured: it
//!   pays for the connection and the server's first touches), and each round of as many as
//!   the limit doubles it while throughput grows by [`GAIN`]; the first round that does not
//!   pay goes back to the best level. A push is often a dozen 4 MiB batches: sent all at once,
//!   the first round would be the whole transfer, at whatever the server makes of it.
//! * **Climb.** After that, rounds at the best level are at least [`MIN_ROUND`] completions
//!   and half the limit, and a probe of another level as many as its limit. A round that
//!   beats the best throughput by [`GAIN`] makes its limit the best and moves one further the
//!   same way; a probe that does not pay goes back to the best limit and turns the other way.
//!   The best throughput decays a little every round ([`DECAY`]), so every few rounds a probe
//!   follows a server whose speed changed.
//! * A request that failed as overload (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED)
//!   halves the limit at once.

use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

use tokio::sync::Notify;

/// The fewest completions a round at the best level measures.
const MIN_ROUND: usize = 4;
/// A round must beat the best throughput by this factor to move the best limit.
const GAIN: f64 = 1.10;
/// How much the best throughput decays each round.
const DECAY: f64 = 0.99;

/// The adaptive limit on requests in flight. See the module documentation.
#[derive(Debug)]
pub(crate) struct Adaptive {
    max: usize,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    /// Still doubling from one.
    starting: bool,
    /// The first request that moves blobs has completed (it pays for the connection and the
    /// server's first touches, so it is not measured).
    warm: bool,
    /// Which way the next probe goes.
    upwards: bool,
    /// The best throughput seen (bytes per second), and the limit it was seen at.
    best: f64,
    best_limit: usize,
    round_started: Instant,
    /// Requests of this round completed, the sums of their latencies (seconds), of the requests
    /// in flight when each was sent, and of their bytes.
    round_done: usize,
    round_latency: f64,
    round_concurrency: usize,
    round_bytes: u64,
    /// The highest limit reached, for reports.
    peak: usize,
}

/// A request's place among those in flight; report how it ended with [`Slot::done`].
pub(crate) struct Slot<'a> {
    limiter: &'a Adaptive,
    sent: Instant,
    /// Requests in flight when it was sent, itself included.
    concurrency: usize,
    bytes: u64,
    overloaded: bool,
}

impl Slot<'_> {
    /// The request failed because the server was overloaded or away.
    pub(crate) fn overloaded(mut self) {
        self.overloaded = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.limiter.release(self);
    }
}

impl Adaptive {
    /// At most `max` in flight (at least one).
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Adaptive {
            max,
            state: Mutex::new(State {
                limit: 1,
                in_flight: 0,
                starting: true,
                warm: false,
                upwards: true,
                best: 0.0,
                best_limit: 1,
                round_started: Instant::now(),
                round_done: 0,
                round_latency: 0.0,
                round_concurrency: 0,
                round_bytes: 0,
                peak: 1,
            }),
            freed: Notify::new(),
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// The highest limit it reached.
    pub(crate) fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Waits for a place among the requests in flight, for a request moving about `bytes` of
    /// blobs (0: a request that is not measured).
    pub(crate) async fn acquire(&self, bytes: u64) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Slot {
                        limiter: self,
                        sent: Instant::now(),
                        concurrency: state.in_flight,
                        bytes,
                        overloaded: false,
                    };
                }
            }
            freed.await;
        }
    }

    fn release(&self, slot: &Slot<'_>) {
        let mut state = self.lock();
        state.in_flight -= 1;
        if slot.overloaded {
            state.limit = (state.limit / 2).max(1);
            state.starting = false;
            state.best_limit = state.limit;
            state.start_round();
        } else if slot.bytes > 0 && !state.warm {
            state.warm = true;
        } else if slot.bytes > 0 && slot.sent >= state.round_started {
            state.round_done += 1;
            state.round_latency += slot.sent.elapsed().as_secs_f64();
            state.round_concurrency += slot.concurrency;
            state.round_bytes += slot.bytes;
            if state.round_done >= state.round_size() {
                // Little's law: mean bytes in flight over mean latency.
                let mean_bytes = state.round_bytes as f64 / state.round_done as f64;
                let rate = mean_bytes * state.round_concurrency as f64 / state.round_latency.max(1e-9);
                let limit = state.limit;
                state.adjust(rate, self.max);
                state.peak = state.peak.max(state.limit);
                tracing::debug!(limit, rate, next = state.limit, "requests in flight");
                state.start_round();
            }
        }
        drop(state);
        self.freed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers, consistent after every statement.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn start_round(&mut self) {
        self.round_started = Instant::now();
        self.round_done = 0;
        self.round_latency = 0.0;
        self.round_concurrency = 0;
        self.round_bytes = 0;
    }

    /// How many completions the current round measures: as many as the limit while starting
    /// or probing a level (at least two, so one slow first request does not decide alone), and
    /// more at the best level, where the estimate sets the bar every probe must clear.
    fn round_size(&self) -> usize {
        match self.starting || self.limit != self.best_limit {
            true => self.limit.max(2),
            false => (self.limit / 2).max(MIN_ROUND),
        }
    }

    /// One round's throughput moves the limit.
    fn adjust(&mut self, rate: f64, max: usize) {
        if self.starting {
            if rate >= self.best * GAIN {
                self.best = rate;
                self.best_limit = self.limit;
                if self.limit < max {
                    self.limit = (self.limit * 2).min(max);
                    return;
                }
            }
            self.starting = false;
            self.limit = self.best_limit;
        } else if rate >= self.best * GAIN {
            self.best = rate;
            self.best_limit = self.limit;
            self.limit = match self.upwards {
                true => (self.limit + 1).min(max),
                false => self.limit.saturating_sub(1).max(1),
            };
        } else if self.limit != self.best_limit {
            self.limit = self.best_limit;
            self.upwards = !self.upwards;
        }
        self.best *= DECAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Runs `requests` through the limiter against a simulated server whose service time for
    /// one request is `service(in_flight)`; returns the limit it settled on.
    async fn settle(requests: usize, max: usize, service: fn(usize) -> Duration) -> (usize, Duration) {
        let limiter = Arc::new(Adaptive::new(max));
        let busy = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..requests)
            .map(|_| {
                let (limiter, busy) = (limiter.clone(), busy.clone());
                tokio::spawn(async move {
                    let _slot = limiter.acquire(1).await;
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(service(now)).await;
                    busy.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        (limiter.limit(), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_scales_gets_the_most_in_flight() {
        // Every request takes 10 ms however many run: throughput grows with the limit.
        let (limit, _) = settle(2000, 16, |_| Duration::from_millis(10)).await;
        assert_eq!(limit, 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_slows_under_concurrency_gets_few() {
        // A GIL-bound server: one at a time at 10 ms each, and each extra request in flight
        // makes every one slower than serial.
        let (limit, elapsed) = settle(400, 16, |n| {
            Duration::from_millis(10 * n as u64 + 5 * (n as u64 - 1))
        })
        .await;
        assert!(limit <= 2, "settled on {limit}");
        // Serial would take 4 s; a fixed 16 in flight 6 s.
        assert!(elapsed < Duration::from_millis(4600), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_with_a_sweet_spot_is_found() {
        // Up to 4 in flight are free, beyond that each costs as much as serial.
        let (limit, _) = settle(3000, 16, |n| {
            Duration::from_millis(if n <= 4 { 10 } else { 10 * n as u64 / 4 + 10 })
        })
        .await;
        assert!((3..=8).contains(&limit), "settled on {limit}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_requests_to_a_server_that_slows_are_not_sent_at_once() {
        // A push of a dozen 4 MiB batches to the GIL-bound server of the test above: serial
        // would take 120 ms, all at once 2 s.
        let (_, elapsed) = settle(12, 16, |n| {
            Duration::from_millis(10 * n as u64 + 5 * (n as u64 - 1))
        })
        .await;
        assert!(elapsed <= Duration::from_millis(150), "{elapsed:?}");
    }

    #[tokio::test]
    async fn requests_that_move_no_blobs_are_not_measured() {
        let limiter = Adaptive::new(8);
        for _ in 0..20 {
            drop(limiter.acquire(0).await);
        }
        let state = limiter.lock();
        assert_eq!((state.limit, state.starting, state.round_done), (1, true, 0));
    }

    #[tokio::test]
    async fn overload_halves_the_limit() {
        let limiter = Adaptive::new(8);
        limiter.lock().limit = 8;
        limiter.acquire(1).await.overloaded();
        assert_eq!(limiter.limit(), 4);
    }
}

//! How many requests the client keeps in flight: found by climbing the measured throughput,
//! not fixed. A fast server (casket) takes many requests at once; a Python server (BuildStream
//! 1's) slows down under concurrency, and a fixed 16 in flight made a push 2.6× slower there
//! than one at a time. The limit starts at one.
//!
//! The limit starts at [`START`] and moves once per round: as many completions, of requests
//! sent since the round began, as the limit. A round's throughput is estimated by Little's law
//! from those requests alone, as their mean concurrency over their mean latency, so requests
//! sent under an earlier limit, and the time a new limit takes to fill, do not blur it.
//! * the round's throughput beat the best seen by [`GAIN`]: remember this limit as the best
//!   and raise it, doubling while that keeps paying (slow start), then by one;
//! * it fell below the best by [`LOSS`]: halve the limit (at least one) and stop doubling;
//! * otherwise go back to the best limit: more in flight did not help;
//! * a request that failed as overload (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) halves
//!   the limit at once.
//!
//! The best throughput decays a little every round, so every few rounds the limit probes one
//! higher again, and follows a server that speeds up.

use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

use tokio::sync::Notify;

/// Requests in flight before anything is measured.
pub(crate) const START: usize = 1;
/// A round must beat the best throughput by this factor to raise the limit.
const GAIN: f64 = 1.10;
/// A round below the best by this factor halves the limit.
const LOSS: f64 = 0.80;
/// How much the best throughput decays each round.
const DECAY: f64 = 0.98;

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
    slow_start: bool,
    /// The best throughput seen (completions per second), and the limit it was seen at.
    best: f64,
    best_limit: usize,
    round_started: Instant,
    /// Requests of this round completed, the sum of their latencies (seconds) and of the
    /// requests in flight when each was sent.
    round_done: usize,
    round_latency: f64,
    round_concurrency: usize,
    /// The highest limit reached, for reports.
    peak: usize,
}

/// A request's place among those in flight; report how it ended with [`Slot::done`].
pub(crate) struct Slot<'a> {
    limiter: &'a Adaptive,
    sent: Instant,
    /// Requests in flight when it was sent, itself included.
    concurrency: usize,
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
                limit: START.min(max),
                in_flight: 0,
                slow_start: true,
                best: 0.0,
                best_limit: START.min(max),
                round_started: Instant::now(),
                round_done: 0,
                round_latency: 0.0,
                round_concurrency: 0,
                peak: START.min(max),
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

    /// Waits for a place among the requests in flight.
    pub(crate) async fn acquire(&self) -> Slot<'_> {
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
            state.slow_start = false;
            state.start_round();
        } else if slot.sent >= state.round_started {
            state.round_done += 1;
            state.round_latency += slot.sent.elapsed().as_secs_f64();
            state.round_concurrency += slot.concurrency;
            if state.round_done >= state.limit {
                let rate = state.round_concurrency as f64 / state.round_latency.max(1e-9);
                state.adjust(rate, self.max);
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
    }

    /// One round's throughput moves the limit.
    fn adjust(&mut self, rate: f64, max: usize) {
        if rate >= self.best * GAIN {
            self.best = rate;
            self.best_limit = self.limit;
            self.limit = if self.slow_start {
                self.limit * 2
            } else {
                self.limit + 1
            }
            .min(max);
        } else if rate < self.best * LOSS {
            self.limit = (self.limit / 2).max(1);
            self.slow_start = false;
        } else {
            self.limit = self.best_limit;
            self.slow_start = false;
        }
        self.best *= DECAY;
        self.peak = self.peak.max(self.limit);
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
                    let _slot = limiter.acquire().await;
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

    #[tokio::test]
    async fn overload_halves_the_limit() {
        let limiter = Adaptive::new(16);
        limiter.lock().limit = 8;
        limiter.acquire().await.overloaded();
        assert_eq!(limiter.limit(), 4);
    }
}

//! How long a retry waits: exponential backoff with "equal jitter". The ceiling doubles from
//! 50 ms up to 5 s and each wait is drawn between half the ceiling and the ceiling, so clients
//! that failed together (a server restart, a full queue) come back spread out, while a given
//! number of retries still spans at least half of the unjittered schedule.

use std::time::Duration;

/// The ceiling of the first wait.
const FIRST: Duration = Duration::from_millis(50);

/// The highest a ceiling grows.
const CEILING: Duration = Duration::from_secs(5);

/// The waits between the attempts of one operation.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { ceiling: FIRST }
    }
}

impl Backoff {
    /// Waits whose first ceiling is `first` (instead of 50 ms).
    pub(crate) fn starting_at(first: Duration) -> Self {
        Backoff {
            ceiling: first.min(CEILING),
        }
    }

    /// The next wait, in `[ceiling / 2, ceiling]`; the ceiling then doubles, up to 5 s.
    fn next_delay(&mut self) -> Duration {
        let delay = rand::random_range(self.ceiling / 2..=self.ceiling);
        self.ceiling = (self.ceiling * 2).min(CEILING);
        delay
    }

    /// Sleeps for the next wait.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_within_their_jitter() {
        let mut backoff = Backoff::default();
        let mut ceiling = FIRST;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                ceiling / 2 <= delay && delay <= ceiling,
                "{delay:?} outside {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(CEILING);
        }
        assert_eq!(backoff.ceiling, CEILING);
    }

    #[test]
    fn clients_failing_together_wait_different_times() {
        let first: Vec<Duration> = (0..20).map(|_| Backoff::default().next_delay()).collect();
        assert!(first.iter().any(|d| *d != first[0]), "{first:?}");
    }
}

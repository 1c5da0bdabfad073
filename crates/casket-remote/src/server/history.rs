//! The last hours of traffic, minute by minute, for the status page: requests, errors, hits,
//! misses and bytes by protocol and tool, the busiest clients, and evictions. Prometheus keeps
//! longer and finer history for those who run it; this is what an operator sees without it.
//!
//! Labels come from clients (tool names, addresses), so each minute keeps at most
//! [`MAX_KEYS`] of each and counts the rest as `other`: memory stays bounded whatever is sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Minutes kept.
pub(crate) const MINUTES: usize = 6 * 60;

/// Most distinct tools, and clients, counted apart in one minute.
const MAX_KEYS: usize = 64;

/// Counts of one kind of traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Traffic {
    /// Requests answered.
    pub(crate) requests: u64,
    /// Requests refused or failed (misses are not errors).
    pub(crate) errors: u64,
    /// Lookups that found what they looked for.
    pub(crate) hits: u64,
    /// Lookups that did not.
    pub(crate) misses: u64,
    /// Request bytes.
    pub(crate) received: u64,
    /// Response bytes.
    pub(crate) sent: u64,
}

impl Traffic {
    fn add(&mut self, other: &Traffic) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.hits += other.hits;
        self.misses += other.misses;
        self.received += other.received;
        self.sent += other.sent;
    }
}

/// One minute.
#[derive(Debug, Default, Serialize)]
struct Minute {
    /// Minutes since the Unix epoch.
    minute: u64,
    /// By `protocol/tool`.
    tools: HashMap<String, Traffic>,
    /// By client address.
    clients: HashMap<String, Traffic>,
    evicted_blobs: u64,
    evicted_bytes: u64,
}

impl Minute {
    fn at(minute: u64) -> Self {
        Minute {
            minute,
            ..Minute::default()
        }
    }
}

/// The history. One per server, inside its metrics.
#[derive(Debug, Default)]
pub(crate) struct History {
    minutes: Mutex<VecDeque<Minute>>,
}

fn now_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// The label traffic beyond [`MAX_KEYS`] is counted under.
const OTHER: &str = "other";

/// Adds `traffic` under `key` in `map`, or under [`OTHER`] once the map is full.
fn add_bounded(map: &mut HashMap<String, Traffic>, key: &str, traffic: &Traffic) {
    let key = if map.contains_key(key) || map.len() < MAX_KEYS {
        key
    } else {
        OTHER
    };
    map.entry(key.to_owned()).or_default().add(traffic);
}

impl History {
    /// Counts a request of `tool` over `protocol` from `client`.
    pub(crate) fn record(&self, protocol: &str, tool: &str, client: &str, traffic: &Traffic) {
        self.with_minute(|minute| {
            add_bounded(&mut minute.tools, &format!("{protocol}/{tool}"), traffic);
            add_bounded(&mut minute.clients, client, traffic);
        });
    }

    /// Counts evictions.
    pub(crate) fn evicted(&self, blobs: u64, bytes: u64) {
        self.with_minute(|minute| {
            minute.evicted_blobs += blobs;
            minute.evicted_bytes += bytes;
        });
    }

    fn with_minute(&self, f: impl FnOnce(&mut Minute)) {
        let now = now_minute();
        let mut minutes = self
            .minutes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if minutes.back().is_none_or(|m| m.minute < now) {
            minutes.push_back(Minute::at(now));
            while minutes.len() > MINUTES {
                minutes.pop_front();
            }
        }
        if let Some(minute) = minutes.back_mut() {
            f(minute);
        }
    }

    /// The history as JSON: the minutes with traffic, oldest first, and the busiest clients
    /// over all of them (the overflow label is not a client, so it is not ranked).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let minutes = self
            .minutes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cutoff = now_minute().saturating_sub(MINUTES as u64);
        let mut clients: HashMap<&str, Traffic> = HashMap::new();
        for minute in minutes.iter().filter(|m| m.minute > cutoff) {
            for (client, traffic) in minute.clients.iter().filter(|(c, _)| *c != OTHER) {
                clients.entry(client).or_default().add(traffic);
            }
        }
        let mut busiest: Vec<(&str, Traffic)> = clients.into_iter().collect();
        busiest.sort_by(|a, b| {
            (b.1.requests, b.1.received + b.1.sent).cmp(&(a.1.requests, a.1.received + a.1.sent))
        });
        busiest.truncate(10);
        let series: Vec<serde_json::Value> = minutes
            .iter()
            .filter(|m| m.minute > cutoff)
            .map(|m| {
                serde_json::json!({
                    "minute": m.minute,
                    "tools": m.tools,
                    "evicted_blobs": m.evicted_blobs,
                    "evicted_bytes": m.evicted_bytes,
                })
            })
            .collect();
        serde_json::json!({
            "minutes": series,
            "busiest_clients": busiest
                .into_iter()
                .map(|(client, traffic)| serde_json::json!({"client": client, "traffic": traffic}))
                .collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_adds_up_by_tool_and_client_and_labels_stay_bounded() {
        let history = History::default();
        let one = Traffic {
            requests: 1,
            hits: 1,
            sent: 10,
            ..Traffic::default()
        };
        history.record("grpc", "bazel", "10.0.0.1", &one);
        history.record("grpc", "bazel", "10.0.0.1", &one);
        history.record("http", "ccache", "10.0.0.2", &one);
        for i in 0..200 {
            history.record("http", &format!("tool{i}"), &format!("10.1.0.{i}"), &one);
        }
        history.evicted(3, 300);
        let json = history.to_json();
        let minute = &json["minutes"][0];
        assert_eq!(minute["tools"]["grpc/bazel"]["requests"], 2);
        assert_eq!(minute["tools"]["http/ccache"]["hits"], 1);
        assert_eq!(minute["tools"].as_object().map(|t| t.len()), Some(MAX_KEYS + 1));
        assert!(minute["tools"]["other"]["requests"].as_u64() > Some(100));
        assert_eq!(minute["evicted_bytes"], 300);
        assert_eq!(json["busiest_clients"][0]["client"], "10.0.0.1");
        assert_eq!(json["busiest_clients"].as_array().map(Vec::len), Some(10));
    }
}

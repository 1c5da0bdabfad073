//! The monitoring port: `/` (a status page for people: hit ratio and traffic of the last hours
//! by protocol and tool, store usage against the quota, evictions, the busiest clients; one
//! self-contained HTML document that loads nothing else), `/metrics` (Prometheus text format)
//! and `/status` (the same as JSON). Plain HTTP/1.1, meant for a private network or loopback.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;

use casket_cache::Namespaces;

use super::Metrics;

#[derive(Clone)]
struct Monitored {
    metrics: Arc<Metrics>,
    namespaces: Arc<Namespaces>,
    about: Arc<serde_json::Value>,
}

impl Monitored {
    /// Reads every namespace's usage into the store gauges; returns them for `/status`.
    fn refresh_usage(&self) -> Vec<serde_json::Value> {
        self.namespaces
            .all()
            .into_iter()
            .map(|(instance, namespace)| {
                let label = instance.as_deref().unwrap_or("default");
                let mut entry = serde_json::json!({
                    "namespace": label,
                    "store": namespace.description,
                });
                if let Some(quota) = &namespace.quota {
                    let usage = quota.usage();
                    self.metrics
                        .set_store(label, usage.blobs, usage.stored_bytes, quota.limit());
                    entry["blobs"] = usage.blobs.into();
                    entry["bytes"] = usage.bytes.into();
                    entry["stored_bytes"] = usage.stored_bytes.into();
                    entry["quota_bytes"] = quota.limit().into();
                }
                entry
            })
            .collect()
    }
}

async fn metrics(State(monitored): State<Monitored>) -> impl IntoResponse {
    monitored.refresh_usage();
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        monitored.metrics.encode(),
    )
}

impl Monitored {
    fn status(&self) -> serde_json::Value {
        let namespaces = self.refresh_usage();
        let mut status = (*self.about).clone();
        status["namespaces"] = namespaces.into();
        status["traffic"] = self.metrics.summary();
        status["history"] = self.metrics.history();
        status
    }
}

async fn status(State(monitored): State<Monitored>) -> Json<serde_json::Value> {
    Json(monitored.status())
}

/// The page, with the status inlined: `<` is escaped so that no value can end the script.
async fn page(State(monitored): State<Monitored>) -> Html<String> {
    let status = monitored.status().to_string().replace('<', "\\u003c");
    Html(STATUS_PAGE.replace("/*STATUS*/", &status))
}

const STATUS_PAGE: &str = include_str!("status.html");

/// Serves `/metrics` and `/status` on `listener` until `shutdown` completes. `about` is
/// included in `/status` as is (version, addresses, access policy).
pub async fn serve_monitoring(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    namespaces: Arc<Namespaces>,
    about: serde_json::Value,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(self::metrics))
        .route("/status", get(status))
        .with_state(Monitored {
            metrics,
            namespaces,
            about: Arc::new(about),
        });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

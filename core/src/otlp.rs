//! Optional trace export over OTLP/HTTP (JSON encoding), when `log.otlp_endpoint` is set.
//!
//! The proxy already continues each call's W3C trace (`traceparent`); at the end of a call it
//! hands one finished [`CallSpan`] to the [`OtlpExporter`], which queues it (bounded; a full
//! queue drops and counts, it never blocks a call) and a background task posts batches to
//! `<endpoint>/v1/traces`. Spans carry the provider, method, status, attempts and the path with
//! credentials redacted; never a header or a body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Spans waiting for export, at most.
pub const QUEUE: usize = 4096;
/// Spans per request to the collector, at most.
pub const BATCH: usize = 512;
/// How long a span may wait for its batch.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One finished call as a span.
#[derive(Debug, Clone)]
pub struct CallSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits: the hub's span.
    pub span_id: String,
    /// The caller's span, when it sent a `traceparent`.
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: &'static str,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// String attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// Integer attributes.
    pub int_attributes: Vec<(&'static str, i64)>,
    /// Whether the call failed (status ≥ 500 or no answer).
    pub error: bool,
}

/// Queues spans for a background exporter.
#[derive(Clone)]
pub struct OtlpExporter {
    tx: mpsc::Sender<CallSpan>,
    dropped: Arc<AtomicU64>,
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// The OTLP/JSON body for `spans` of `service`.
pub fn encode(service: &str, spans: &[CallSpan]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attrs: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            attrs.extend(
                s.int_attributes
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": {"intValue": v.to_string()}})),
            );
            let mut span = json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(p) = &s.parent_span_id {
                span["parentSpanId"] = Value::String(p.clone());
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "integration-hub"}, "spans": spans}],
    }]})
}

impl OtlpExporter {
    /// Starts the background exporter posting to `<endpoint>/v1/traces`.
    pub fn spawn(endpoint: &str, service: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<CallSpan>(QUEUE);
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let service = service.to_owned();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client builds");
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut failing = false;
            loop {
                let deadline = tokio::time::sleep(FLUSH_EVERY);
                tokio::pin!(deadline);
                let closed = loop {
                    tokio::select! {
                        span = rx.recv() => match span {
                            Some(s) => {
                                batch.push(s);
                                if batch.len() >= BATCH { break false; }
                            }
                            None => break true,
                        },
                        _ = &mut deadline => break false,
                    }
                };
                if !batch.is_empty() {
                    let body = encode(&service, &batch);
                    batch.clear();
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => failing = false,
                        Ok(r) if !failing => {
                            failing = true;
                            tracing::warn!(
                                status = r.status().as_u16(),
                                "OTLP collector refused spans"
                            );
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "cannot reach the OTLP collector");
                        }
                        _ => {}
                    }
                }
                if closed {
                    return;
                }
            }
        });
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues a span; drops it (and counts) when the queue is full.
    pub fn export(&self, span: CallSpan) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_otlp_json_shape() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        let span = CallSpan {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: Some("00f067aa0ba902b7".into()),
            name: "call",
            start: t,
            end: t + Duration::from_millis(2),
            attributes: vec![("hub.provider", "stripe".into())],
            int_attributes: vec![("http.response.status_code", 200)],
            error: false,
        };
        let v = encode("integration-hub", &[span]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["startTimeUnixNano"], "1500000000");
        assert_eq!(s["endTimeUnixNano"], "1502000000");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "integration-hub"
        );
    }
}

//! W3C Trace Context: the hub continues the caller's trace rather than restarting it. It keeps
//! the trace id and flags of an incoming `traceparent`, becomes the parent of the provider's
//! span with a span id of its own, and logs both ids on every line of the call. Without a valid
//! `traceparent` it starts a new trace.

use rand::RngCore;

/// The trace position of one call through the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, shared with the caller and the provider.
    pub trace_id: String,
    /// The hub's span id (16 hex digits): the `parent-id` the provider sees.
    pub span_id: String,
    /// The caller's span id, when it sent a valid `traceparent`.
    pub parent_id: Option<String>,
    /// Trace flags (sampled bit), kept from the caller.
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl TraceContext {
    /// Continues `traceparent` when it is valid (version 00, non-zero ids), else starts a trace.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let parsed = traceparent.and_then(|tp| {
            let mut parts = tp.trim().split('-');
            let (version, trace_id, parent_id, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let valid = version == "00"
                && parts.next().is_none()
                && is_hex(trace_id, 32)
                && trace_id.bytes().any(|b| b != b'0')
                && is_hex(parent_id, 16)
                && parent_id.bytes().any(|b| b != b'0')
                && is_hex(flags, 2);
            valid.then(|| (trace_id.to_owned(), parent_id.to_owned(), flags.to_owned()))
        });
        match parsed {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random_hex(8),
                parent_id: Some(parent),
                flags,
            },
            None => Self {
                trace_id: random_hex(16),
                span_id: random_hex(8),
                parent_id: None,
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` the provider receives: same trace, the hub's span as parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::continue_or_start(Some(tp));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(
            t.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(t.traceparent().ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let t = TraceContext::continue_or_start(Some(bad));
            assert!(t.parent_id.is_none(), "{bad:?} accepted");
            assert!(is_hex(&t.trace_id, 32) && is_hex(&t.span_id, 16));
        }
    }
}

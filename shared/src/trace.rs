//! W3C Trace Context: the `traceparent` of an HTTP request follows everything it causes,
//! through the outbox and RabbitMQ (the AMQP header `traceparent`, events.md) into the
//! consumers' effects and the events they publish in turn, so one customer action is one
//! trace across the three services, and its id is in their logs.
//!
//! The current trace is task-local: the HTTP middleware and the consumer set it around a
//! request or a delivery, and [`crate::events::Envelope::new`] reads it.

use rand::Rng;
use std::fmt;

tokio::task_local! {
    static CURRENT: Traceparent;
}

/// One `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The whole trace's id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// This span's id (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl Traceparent {
    /// Parses a header value; `None` for anything the W3C format does not allow.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may add more (kept compatible).
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version, 2)
            && lower_hex(trace, 32)
            && lower_hex(span, 16)
            && lower_hex(flags, 2))
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace (sampled).
    pub fn root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        rng.fill(&mut trace_id);
        trace_id[0] |= 1;
        Self {
            trace_id,
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// A span of the same trace, child of this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 hex digits (what logs carry), formatted only when a log line
    /// is written: every request makes a span, so no string is built for it up front.
    pub fn trace_id_hex(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

/// A trace id, displayed as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn new_span_id() -> [u8; 8] {
    let mut span = [0u8; 8];
    rand::rng().fill(&mut span);
    span[7] |= 1;
    span
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// The trace of the request or delivery being handled, if any.
pub fn current() -> Option<Traceparent> {
    CURRENT.try_with(|t| *t).ok()
}

/// Makes the current trace, if any, the one that SQL writing its own events in this
/// transaction puts on them (`clickcollect.traceparent`, transaction-local).
pub async fn bind(
    txn: &impl sea_orm::ConnectionTrait,
    trace: Option<&str>,
) -> Result<(), sea_orm::DbErr> {
    if let Some(trace) = trace {
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT set_config('clickcollect.traceparent', $1, true)",
            [trace.to_owned().into()],
        ))
        .await?;
    }
    Ok(())
}

/// Runs `work` as part of `trace`.
pub async fn scope<F: Future>(trace: Traceparent, work: F) -> F::Output {
    CURRENT.scope(trace, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_w3c_traceparent_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = Traceparent::parse(value).ok_or("a valid traceparent")?;
        assert_eq!(parsed.to_string(), value);
        assert_eq!(
            parsed.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        Ok(())
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(Traceparent::parse(bad).is_none(), "{bad}");
        }
        assert!(
            Traceparent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[tokio::test]
    async fn the_current_trace_is_the_scopes() {
        assert!(current().is_none());
        let root = Traceparent::root();
        let inside = scope(root, async { current() }).await;
        assert_eq!(inside, Some(root));
        assert!(Traceparent::parse(&root.to_string()).is_some());
    }
}

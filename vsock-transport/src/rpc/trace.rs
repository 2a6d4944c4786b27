//! Traces across the boundary: a W3C Trace Context for each traced call,
//! sent in the request's meta, and the server's report of where its time
//! went, turned into `tracing` spans under the call's span.
//!
//! A call is traced when its `svmc.call` span is enabled (a `tracing`
//! subscriber wants INFO spans of this crate). The client then sends a
//! `traceparent` naming a fresh trace id and the call as parent; the
//! server answers with its timings (`svmc_comm::ext::ResponseMeta`), and the
//! client records them as a child span `svmc.guest` with the fields
//! `trace_id`, `queued_us` (from when the server read the request to when
//! it started it) and `handled_us` (the handler and encoding the answer).
//! Without a subscriber nothing is sent and nothing is measured.

use core::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use svmc_comm::RequestId;
use svmc_comm::ext::{RequestMeta, ResponseMeta};

/// The `svmc.call` span of a call of protocol `$protocol`, its fields
/// `id` and `trace_id` recorded later ([`Call`]). A macro so that the
/// span's target is the module of the client that makes the call.
macro_rules! call_span {
    ($protocol:expr) => {
        tracing::info_span!(
            "svmc.call",
            protocol = $protocol,
            id = tracing::field::Empty,
            trace_id = tracing::field::Empty
        )
    };
}
pub(crate) use call_span;

/// One call's `svmc.call` span, and its trace ids when it is traced:
/// what both clients record around a call.
pub(crate) struct Call {
    span: tracing::Span,
    trace: Option<Context>,
}

impl Call {
    /// Starts tracing the call whose span is `span` ([`call_span!`]).
    /// Where the span is enabled and the `meta` extension is on
    /// (`meta_on`), the call is traced: `meta` gets a fresh `traceparent`,
    /// the span its trace id.
    pub(crate) fn start(span: tracing::Span, meta_on: bool, meta: &mut RequestMeta) -> Self {
        let trace = (!span.is_disabled() && meta_on).then(Context::new);
        if let Some(t) = &trace {
            meta.traceparent = Some(t.traceparent());
            span.record("trace_id", tracing::field::display(t.trace_id()));
        }
        Self { span, trace }
    }

    /// The call's span.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The call got request id `id`.
    pub(crate) fn sent(&self, id: RequestId) {
        self.span.record("id", id.0);
    }

    /// The call was answered, with the server's meta `m` if any: its
    /// timings become the child span `svmc.guest` of a traced call.
    pub(crate) fn answered(&self, m: Option<&ResponseMeta>) {
        if let (Some(t), Some(m)) = (&self.trace, m) {
            guest_span(&self.span, t, m);
        }
    }
}

/// The ids of one traced call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    trace_id: u128,
    span_id: u64,
}

impl Context {
    /// Fresh random ids (never all zero, which W3C reserves).
    pub(crate) fn new() -> Self {
        Self {
            trace_id: (u128::from(random()) << 64 | u128::from(random())).max(1),
            span_id: random().max(1),
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub(crate) fn trace_id(&self) -> alloc::string::String {
        alloc::format!("{:032x}", self.trace_id)
    }

    /// `00-<trace id>-<parent id>-01`: version 00, sampled.
    pub(crate) fn traceparent(&self) -> alloc::string::String {
        let mut s = alloc::string::String::with_capacity(55);
        let _ = write!(s, "00-{:032x}-{:016x}-01", self.trace_id, self.span_id);
        s
    }
}

/// 64 random bits: std's per-process random hash keys over a counter (no
/// cryptographic strength needed, only ids that do not collide).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Records the server's side of the call as a child span of `call`.
fn guest_span(call: &tracing::Span, t: &Context, m: &ResponseMeta) {
    let span = tracing::info_span!(
        parent: call,
        "svmc.guest",
        trace_id = %t.trace_id(),
        queued_us = m.queued_us,
        handled_us = m.handled_us,
    );
    drop(span);
}

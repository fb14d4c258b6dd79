-- The trace context of the span that wrote the row (W3C traceparent, then a
-- newline and tracestate when there is one), carried into the task so that
-- its run joins the sign-up's trace. NULL when tracing is off. A nullable
-- column without a default: adding it rewrites nothing.
ALTER TABLE outbox ADD COLUMN trace_context text;

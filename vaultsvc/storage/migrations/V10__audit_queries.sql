-- ListAuditEvents filters by method, outcome and tool: each gets an index that yields its
-- events newest first, like audit_events_time (which serves the time range and the
-- retention job) and audit_events_principal. A method is looked up by its bare name
-- ("CreateSecret"), so one index serves both "/pkg.Service/CreateSecret" and "CreateSecret";
-- queries spell the expression exactly as here (repository.AUDIT_BARE_METHOD_SQL).
CREATE INDEX audit_events_method
    ON audit_events ((regexp_replace(method, '^.*/', '')), time DESC, id DESC);
CREATE INDEX audit_events_outcome ON audit_events (outcome, time DESC, id DESC);
CREATE INDEX audit_events_tool ON audit_events (tool, time DESC, id DESC);

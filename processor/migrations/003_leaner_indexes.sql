-- Fewer index updates per row on the two hot tables; every audit query keeps an index.
--
-- connections_conn_idx (conn_id) duplicates the leading column of the primary key
-- (conn_id, opened_at), which serves the processor's lookups by conn_id just as well.
-- connections_pid_idx (host, pid) serves no query: `tcpaudit query --pid` alone cannot use it,
-- and with --host the planner narrows through connections_host_idx (host, opened_at) first.
-- tcp_events_time_idx becomes a BRIN index: rows arrive in about event-time order within each
-- daily partition, so block ranges answer time-range scans at a fraction of a B-tree's upkeep.
DROP INDEX connections_conn_idx, connections_pid_idx, tcp_events_time_idx;
CREATE INDEX tcp_events_time_idx ON tcp_events USING brin (event_time);

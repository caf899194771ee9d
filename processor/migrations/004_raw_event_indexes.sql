-- One index fewer to update for every state change stored.
--
-- tcp_events_host_seq_idx (host, run_id, seq) serves no query: the processor finds events by
-- conn_id (the primary key's first column), `tcpaudit query` reads only connections, and the
-- README's audit questions read tcp_events by conn_id or by event_time (the BRIN index). Loss
-- is looked up in capture_gaps, which has its own (host, run_id) index. It cost over a quarter
-- of the database's time per stored event.
DROP INDEX tcp_events_host_seq_idx;

-- Time-partitioned audit tables, capture gaps, host runs, the socket fields of schema v2, and
-- the read-only auditor role. Rows written by 001 are copied over; the old tables are dropped.
--
-- tcp_events is partitioned by event_time and connections by opened_at (daily partitions made
-- ahead of time by processor/partitions.ts, plus a DEFAULT partition for stray times). The
-- partition key must be part of every unique key, so the keys are (conn_id, seq, event_time)
-- and (conn_id, opened_at): a redelivered message has the same event time, so it still
-- conflicts and inserts nothing. A connection's opened_at is the time of its first event and
-- does not change; the handler moves the row in the rare case an earlier event arrives late.

ALTER TABLE tcp_events RENAME TO tcp_events_v1;
ALTER INDEX tcp_events_pkey RENAME TO tcp_events_v1_pkey;
DROP INDEX tcp_events_time_idx;
ALTER TABLE connections RENAME TO connections_v1;
ALTER INDEX connections_pkey RENAME TO connections_v1_pkey;
DROP INDEX connections_opened_idx, connections_remote_idx, connections_local_port_idx,
  connections_pid_idx;

CREATE TABLE tcp_events (
  conn_id         text        NOT NULL,
  seq             bigint      NOT NULL,
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  run_id          text        NOT NULL,
  event_time      timestamptz NOT NULL,
  family          smallint    NOT NULL CHECK (family IN (4, 6)),
  local_addr      inet        NOT NULL,
  local_port      integer     NOT NULL CHECK (local_port BETWEEN 0 AND 65535),
  remote_addr     inet        NOT NULL,
  remote_port     integer     NOT NULL CHECK (remote_port BETWEEN 0 AND 65535),
  old_state       text        NOT NULL,
  new_state       text        NOT NULL,
  pid             integer     NOT NULL,
  tid             integer     NOT NULL,
  comm            text        NOT NULL,
  uid             bigint      NOT NULL,
  netns           bigint      NOT NULL,
  cgroup_id       bigint      NOT NULL,
  bytes_sent      bigint      NOT NULL,
  bytes_received  bigint      NOT NULL,
  segs_out        bigint      NOT NULL,
  segs_in         bigint      NOT NULL,
  retransmits     bigint      NOT NULL,
  srtt_us         bigint      NOT NULL,
  sock_inode      bigint      NOT NULL DEFAULT 0,
  sock_uid        bigint      NOT NULL DEFAULT 0,
  sock_gid        bigint      NOT NULL DEFAULT 0,
  kafka_topic     text        NOT NULL,
  kafka_partition integer     NOT NULL,
  kafka_offset    bigint      NOT NULL,
  PRIMARY KEY (conn_id, seq, event_time)
) PARTITION BY RANGE (event_time);

CREATE TABLE tcp_events_default PARTITION OF tcp_events DEFAULT;
CREATE INDEX tcp_events_time_idx ON tcp_events (event_time);
CREATE INDEX tcp_events_host_seq_idx ON tcp_events (host, run_id, seq);

CREATE TABLE connections (
  conn_id         text        NOT NULL,
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  run_id          text        NOT NULL,
  role            text        NOT NULL CHECK (role IN ('outbound', 'inbound', 'listener', 'unknown')),
  outcome         text        NOT NULL
    CHECK (outcome IN ('open', 'completed', 'refused', 'reset', 'aborted', 'expired')),
  family          smallint    NOT NULL,
  local_addr      inet        NOT NULL,
  local_port      integer     NOT NULL,
  remote_addr     inet        NOT NULL,
  remote_port     integer     NOT NULL,
  pid             integer     NOT NULL,
  tid             integer     NOT NULL,
  comm            text        NOT NULL,
  uid             bigint      NOT NULL,
  netns           bigint      NOT NULL,
  cgroup_id       bigint      NOT NULL,
  sock_inode      bigint      NOT NULL DEFAULT 0,
  sock_uid        bigint      NOT NULL DEFAULT 0,
  sock_gid        bigint      NOT NULL DEFAULT 0,
  opened_at       timestamptz NOT NULL,
  established_at  timestamptz,
  closed_at       timestamptz,
  last_event_at   timestamptz NOT NULL,
  connect_ms      double precision,
  duration_ms     double precision,
  closed_by       text CHECK (closed_by IN ('local', 'remote', 'both')),
  close_kind      text CHECK (close_kind IN ('fin', 'simultaneous', 'reset')),
  states          text[]      NOT NULL,
  last_state      text        NOT NULL,
  first_seq       bigint      NOT NULL,
  last_seq        bigint      NOT NULL,
  event_count     integer     NOT NULL,
  has_gap         boolean     NOT NULL DEFAULT false,
  expired_at      timestamptz,
  expire_reason   text CHECK (expire_reason IN ('reboot', 'host-silent', 'continued')),
  bytes_sent      bigint      NOT NULL,
  bytes_received  bigint      NOT NULL,
  segs_out        bigint      NOT NULL,
  segs_in         bigint      NOT NULL,
  retransmits     bigint      NOT NULL,
  srtt_us         bigint      NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (conn_id, opened_at)
) PARTITION BY RANGE (opened_at);

CREATE TABLE connections_default PARTITION OF connections DEFAULT;
-- The common audit questions: by address, port, process, host, time range, outcome.
CREATE INDEX connections_conn_idx ON connections (conn_id);
CREATE INDEX connections_opened_idx ON connections (opened_at);
CREATE INDEX connections_remote_idx ON connections (remote_addr, remote_port, opened_at);
CREATE INDEX connections_local_idx ON connections (local_addr, local_port, opened_at);
CREATE INDEX connections_rport_idx ON connections (remote_port, opened_at);
CREATE INDEX connections_lport_idx ON connections (local_port, opened_at);
CREATE INDEX connections_host_idx ON connections (host, opened_at);
CREATE INDEX connections_comm_idx ON connections (comm, opened_at);
CREATE INDEX connections_pid_idx ON connections (host, pid);
CREATE INDEX connections_outcome_idx ON connections (outcome, opened_at);
CREATE INDEX connections_open_idx ON connections (host, boot_id, run_id) WHERE outcome = 'open';

INSERT INTO tcp_events (conn_id, seq, host, boot_id, run_id, event_time, family, local_addr,
  local_port, remote_addr, remote_port, old_state, new_state, pid, tid, comm, uid, netns,
  cgroup_id, bytes_sent, bytes_received, segs_out, segs_in, retransmits, srtt_us, kafka_topic,
  kafka_partition, kafka_offset)
SELECT conn_id, seq, host, boot_id, split_part(conn_id, '-', 2), event_time, family, local_addr,
  local_port, remote_addr, remote_port, old_state, new_state, pid, tid, comm, uid, netns,
  cgroup_id, bytes_sent, bytes_received, segs_out, segs_in, retransmits, srtt_us, kafka_topic,
  kafka_partition, kafka_offset
FROM tcp_events_v1;

INSERT INTO connections (conn_id, host, boot_id, run_id, role, outcome, family, local_addr,
  local_port, remote_addr, remote_port, pid, tid, comm, uid, netns, cgroup_id, opened_at,
  established_at, closed_at, last_event_at, connect_ms, duration_ms, closed_by, close_kind,
  states, last_state, first_seq, last_seq, event_count, has_gap, bytes_sent, bytes_received,
  segs_out, segs_in, retransmits, srtt_us, updated_at)
SELECT conn_id, host, boot_id, split_part(conn_id, '-', 2), role, outcome, family, local_addr,
  local_port, remote_addr, remote_port, pid, tid, comm, uid, netns, cgroup_id, opened_at,
  established_at, closed_at, coalesce(closed_at, established_at, opened_at), connect_ms,
  duration_ms, closed_by, close_kind, states, last_state,
  (SELECT min(seq) FROM tcp_events_v1 e WHERE e.conn_id = c.conn_id), last_seq, event_count,
  has_gap, bytes_sent, bytes_received, segs_out, segs_in, retransmits, srtt_us, updated_at
FROM connections_v1 c;

DROP TABLE tcp_events_v1, connections_v1;

-- Loss the producer reported on '<topic>.gaps'; one row per message.
CREATE TABLE capture_gaps (
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  run_id          text        NOT NULL,
  seq_from        bigint      NOT NULL,
  seq_to          bigint      NOT NULL,
  lost            bigint      NOT NULL,
  reason          text        NOT NULL,
  detected_at     timestamptz NOT NULL,
  kafka_topic     text        NOT NULL,
  kafka_partition integer     NOT NULL,
  kafka_offset    bigint      NOT NULL,
  received_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX capture_gaps_run_idx ON capture_gaps (host, run_id);

-- Each capture run of each host: when it was first and last seen (event time and processing
-- time). The expiry rule (processor/expiry.ts) reads it. Updated after each batch's commit: it
-- is monotonic metadata, not audit data, and keeping it out of the transaction keeps batches
-- of different partitions from queueing on one host's row.
CREATE TABLE host_runs (
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  run_id          text        NOT NULL,
  first_event_at  timestamptz NOT NULL,
  last_event_at   timestamptz NOT NULL,
  last_seen_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (host, boot_id, run_id)
);

ALTER TABLE dead_letters ADD COLUMN message_headers jsonb;

-- Auditors read through the NOLOGIN group role tcpaudit_reader. Creating a role needs
-- CREATEROLE, which the processor's own login should not have: when it lacks it, an
-- administrator runs the CREATE ROLE below once per cluster and reruns nothing else (the
-- grants are re-applied on every processor start by processor/partitions.ts).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tcpaudit_reader') THEN
    IF (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
      CREATE ROLE tcpaudit_reader NOLOGIN;
    ELSE
      RAISE NOTICE 'role tcpaudit_reader missing and % may not create roles: run CREATE ROLE tcpaudit_reader NOLOGIN as an administrator', current_user;
    END IF;
  END IF;
END $$;

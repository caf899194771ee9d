-- Raw state changes, connection lifecycles, dead letters and the consumed Kafka offsets.
-- The offsets live here, not only in Kafka, so that rows and offsets commit together.

CREATE TABLE tcp_events (
  conn_id         text        NOT NULL,
  seq             bigint      NOT NULL,
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  event_time      timestamptz NOT NULL,
  family          smallint    NOT NULL CHECK (family IN (4, 6)),
  local_addr      inet        NOT NULL,
  local_port      integer     NOT NULL,
  remote_addr     inet        NOT NULL,
  remote_port     integer     NOT NULL,
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
  kafka_topic     text        NOT NULL,
  kafka_partition integer     NOT NULL,
  kafka_offset    bigint      NOT NULL,
  -- A redelivered message carries the same (conn_id, seq): inserting it again is a no-op.
  PRIMARY KEY (conn_id, seq)
);

CREATE INDEX tcp_events_time_idx ON tcp_events (event_time);

CREATE TABLE connections (
  conn_id         text        PRIMARY KEY,
  host            text        NOT NULL,
  boot_id         text        NOT NULL,
  role            text        NOT NULL CHECK (role IN ('outbound', 'inbound', 'listener', 'unknown')),
  outcome         text        NOT NULL,
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
  opened_at       timestamptz NOT NULL,
  established_at  timestamptz,
  closed_at       timestamptz,
  connect_ms      double precision,
  duration_ms     double precision,
  closed_by       text CHECK (closed_by IN ('local', 'remote', 'both')),
  close_kind      text CHECK (close_kind IN ('fin', 'simultaneous', 'reset')),
  states          text[]      NOT NULL,
  last_state      text        NOT NULL,
  last_seq        bigint      NOT NULL,
  event_count     integer     NOT NULL,
  has_gap         boolean     NOT NULL DEFAULT false,
  bytes_sent      bigint      NOT NULL,
  bytes_received  bigint      NOT NULL,
  segs_out        bigint      NOT NULL,
  segs_in         bigint      NOT NULL,
  retransmits     bigint      NOT NULL,
  srtt_us         bigint      NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX connections_opened_idx ON connections (opened_at);
CREATE INDEX connections_remote_idx ON connections (remote_addr, remote_port);
CREATE INDEX connections_local_port_idx ON connections (local_port);
CREATE INDEX connections_pid_idx ON connections (host, pid);

CREATE TABLE dead_letters (
  id              bigserial   PRIMARY KEY,
  reason          text        NOT NULL,
  kafka_topic     text        NOT NULL,
  kafka_partition integer     NOT NULL,
  kafka_offset    bigint      NOT NULL,
  message_key     bytea,
  message_value   bytea,
  received_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE TABLE consumer_offsets (
  group_id        text        NOT NULL,
  topic           text        NOT NULL,
  partition       integer     NOT NULL,
  next_offset     bigint      NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_id, topic, partition)
);

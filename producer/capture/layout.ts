/**
 * Byte offsets of `struct tcpaudit_event` (bpf/tcpaudit.h, layout version 2). Little-endian.
 * Change the C struct and this table together, and bump LAYOUT_VERSION in both.
 */
export const LAYOUT_VERSION = 2;
export const RECORD_SIZE = 168;
export const COMM_LEN = 16;

export const OFF = {
  seq: 0,
  tsNs: 8,
  runId: 16,
  connId: 24,
  cgroupId: 32,
  bytesSent: 40,
  bytesReceived: 48,
  saddr: 56,
  daddr: 72,
  pid: 88,
  tid: 92,
  uid: 96,
  netns: 100,
  segsOut: 104,
  segsIn: 108,
  totalRetrans: 112,
  srttUs: 116,
  version: 120,
  family: 122,
  sport: 124,
  dport: 126,
  oldState: 128,
  newState: 129,
  procSource: 130, // enum tcpaudit_proc_source; 4 (seeded from /proc) needs no new layout
  comm: 136,
  sockInode: 152,
  sockUid: 160,
  sockGid: 164,
} as const;

/** Limits of the in-kernel filters (TCPAUDIT_MAX_PORTS, TCPAUDIT_MAX_CIDRS). */
export const MAX_FILTER_PORTS = 8;
export const MAX_FILTER_CIDRS = 4;

export const AF_INET = 2;
export const AF_INET6 = 10;

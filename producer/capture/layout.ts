/**
 * Byte offsets of `struct tcpaudit_event` (bpf/tcpaudit.h, layout version 1). Little-endian.
 * Change the C struct and this table together, and bump LAYOUT_VERSION in both.
 */
export const LAYOUT_VERSION = 1;
export const RECORD_SIZE = 160;
export const COMM_LEN = 16;

export const OFF = {
  seq: 0,
  tsNs: 8,
  runId: 16,
  connId: 24,
  cgroupId: 32,
  bytesAcked: 40,
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
  procSource: 130,
  comm: 136,
} as const;

export const AF_INET = 2;
export const AF_INET6 = 10;

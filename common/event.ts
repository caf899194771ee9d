/**
 * One TCP state change, decoded from the kernel's record. This is the shape the capture layer
 * hands to the producer and to `tcpaudit capture`; the Avro schema in schemas/ mirrors it.
 */

/** Kernel TCP states, spelled as RFC 793 spells them (the kernel's TCP_NEW_SYN_RECV aside). */
export const TCP_STATES = [
  'UNKNOWN', // 0: not a kernel state, placeholder so the index equals the kernel's number
  'ESTABLISHED',
  'SYN-SENT',
  'SYN-RECEIVED',
  'FIN-WAIT-1',
  'FIN-WAIT-2',
  'TIME-WAIT',
  'CLOSED',
  'CLOSE-WAIT',
  'LAST-ACK',
  'LISTEN',
  'CLOSING',
  'NEW-SYN-RECEIVED',
  'BOUND-INACTIVE',
] as const;

export type TcpState = (typeof TCP_STATES)[number];

export function stateName(kernelState: number): TcpState {
  return TCP_STATES[kernelState] ?? 'UNKNOWN';
}

export interface TcpEvent {
  /** Per-host, per-capture-run sequence number; a gap means events were lost. */
  seq: number;
  /** Connection identity: the same for every event of one connection, never reused. */
  connId: string;
  host: string;
  bootId: string;
  /** Wall-clock time of the state change, nanoseconds since the Unix epoch. */
  timeNs: bigint;
  family: 4 | 6;
  localAddr: string;
  localPort: number;
  remoteAddr: string;
  remotePort: number;
  oldState: TcpState;
  newState: TcpState;
  /** The process that opened the connection (active open) or owns the listener (passive). */
  pid: number;
  tid: number;
  comm: string;
  uid: number;
  netns: number;
  cgroupId: bigint;
  /**
   * Payload bytes at this transition: sent and acknowledged by the peer, and received in
   * order. SYN and FIN sequence space is not counted; retransmitted bytes count once.
   */
  bytesSent: bigint;
  bytesReceived: bigint;
  segsOut: number;
  segsIn: number;
  retransmits: number;
  srttUs: number;
  /**
   * Inode of the socket's file (as in /proc/<pid>/fd -> socket:[inode] and `ss -e`); 0 while
   * the socket has no file (a passive child before accept()). Remembered once seen, so an
   * orphaned socket closing after close() still reports it. Inodes fit a double exactly.
   */
  sockInode: number;
  /** sk->sk_uid: the user owning the socket (routing and netfilter owner match). */
  sockUid: number;
  /** fsgid of the credentials that opened the socket's file; 0 with no file. */
  sockGid: number;
}

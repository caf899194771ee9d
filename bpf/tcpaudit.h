/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wire record shared by the BPF program (bpf/tcpaudit.bpf.c), the addon (native/) and, by
 * offsets, the TypeScript decoder (producer/capture/decode.ts). Change a field and you must
 * bump TCPAUDIT_LAYOUT_VERSION and the decoder's offsets together.
 */
#ifndef TCPAUDIT_H
#define TCPAUDIT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define TCPAUDIT_LAYOUT_VERSION 2
#define TCPAUDIT_COMM_LEN 16

/* Load-time filter limits (the const volatile filter_* arrays in tcpaudit.bpf.c). */
#define TCPAUDIT_MAX_PORTS 8
#define TCPAUDIT_MAX_CIDRS 4

/* One CIDR of filter_cidrs: network-order address (IPv4 in the first 4 bytes), prefix length. */
struct tcpaudit_cidr {
	__u8 addr[16];
	__u16 family; /* AF_INET or AF_INET6; 0 ends the list */
	__u16 prefix;
	__u32 pad;
};
#define TCPAUDIT_RECORD_SIZE 168

/* Where the process fields of a record came from (tcpaudit_event.proc_source). */
enum tcpaudit_proc_source {
	TCPAUDIT_PROC_NONE = 0,     /* unknown: first seen in a packet-driven transition */
	TCPAUDIT_PROC_OWNER = 1,    /* recorded at connect()/listen() in the owner's context */
	TCPAUDIT_PROC_LISTENER = 2, /* passive open: copied from the listener's record */
	TCPAUDIT_PROC_CURRENT = 3,  /* first seen in a syscall-driven transition: current */
	TCPAUDIT_PROC_SEEDED = 4,   /* passive open: listener predates the capture, read from /proc */
};

/* Entries of the "listeners" map: one per (netns, port) in LISTEN. */
#define TCPAUDIT_MAX_LISTENERS 16384

/*
 * Who owns a socket and which connection it belongs to (socket-local storage), and, keyed by
 * struct tcpaudit_listener_key, the process behind a listening port: the loader writes these
 * for listeners that predate the capture (proc_source TCPAUDIT_PROC_SEEDED, tid = pid).
 */
struct tcpaudit_sock_info {
	__u64 conn_id;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 netns;
	__u8 proc_source;
	__u8 active;    /* opened by connect(): its SYN counts in bytes_acked */
	__u8 closed;    /* reached TCP_CLOSE: the next transition starts a new connection */
	__u8 born;      /* 0 in fresh storage: the socket has not been seen yet */
	__u8 pad[4];
	char comm[TCPAUDIT_COMM_LEN];
	__u64 sock_inode; /* remembered: the file is gone by the time an orphan closes */
	__u32 sock_uid;
	__u32 sock_gid;
};
#define TCPAUDIT_SOCK_INFO_SIZE 72

/* Port in host order (as the tracepoint reports it), netns is the namespace's inode. */
struct tcpaudit_listener_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

/* Slots of the per-CPU "losses" array: every way the kernel side can lose information. */
enum tcpaudit_loss {
	TCPAUDIT_LOSS_RING = 0,         /* ring buffer full: the record is gone, seq shows a gap */
	TCPAUDIT_LOSS_SOCK_MAP = 1,     /* socks storage not created: a one-off conn id */
	TCPAUDIT_LOSS_LISTENER_MAP = 2, /* listeners update failed: children lose their process */
	TCPAUDIT_LOSS_MAX = 3,
};

/*
 * One TCP state change. Little-endian (x86), 8-byte aligned, no implicit padding: every hole
 * is a named pad field so the C compiler and the JS decoder agree byte for byte.
 */
struct tcpaudit_event {
	__u64 seq;            /* 0: per-load sequence, taken even when the reserve fails */
	__u64 ts_ns;          /* 8: bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME) */
	__u64 run_id;         /* 16: per-load id chosen by the loader, part of the conn id */
	__u64 conn_id;        /* 24: per-load counter assigned at first sight of a socket */
	__u64 cgroup_id;      /* 32 */
	__u64 bytes_sent;     /* 40: payload bytes sent and acknowledged (no SYN, no FIN) */
	__u64 bytes_received; /* 48: payload bytes received in order (no SYN, no FIN) */
	__u8 saddr[16];       /* 56: IPv4 uses the first 4 bytes, network order */
	__u8 daddr[16];       /* 72 */
	__u32 pid;            /* 88: tgid */
	__u32 tid;            /* 92 */
	__u32 uid;            /* 96 */
	__u32 netns;          /* 100: network namespace inode */
	__u32 segs_out;       /* 104 */
	__u32 segs_in;        /* 108 */
	__u32 total_retrans;  /* 112 */
	__u32 srtt_us;        /* 116: smoothed RTT, already shifted (srtt_us >> 3) */
	__u16 version;        /* 120: TCPAUDIT_LAYOUT_VERSION */
	__u16 family;         /* 122: AF_INET (2) or AF_INET6 (10) */
	__u16 sport;          /* 124: host order, as the tracepoint reports it */
	__u16 dport;          /* 126: host order */
	__u8 oldstate;        /* 128 */
	__u8 newstate;        /* 129 */
	__u8 proc_source;     /* 130: enum tcpaudit_proc_source */
	__u8 pad0[5];         /* 131 */
	char comm[TCPAUDIT_COMM_LEN]; /* 136 */
	__u64 sock_inode;     /* 152: inode of the socket's file; 0 until it has one */
	__u32 sock_uid;       /* 160: sk->sk_uid, the socket's owner for routing and netfilter */
	__u32 sock_gid;       /* 164: fsgid of the credentials that opened the socket's file */
};

#ifdef __cplusplus
static_assert(sizeof(struct tcpaudit_event) == TCPAUDIT_RECORD_SIZE, "record size drifted");
static_assert(sizeof(struct tcpaudit_sock_info) == TCPAUDIT_SOCK_INFO_SIZE, "sock_info drifted");
static_assert(sizeof(struct tcpaudit_listener_key) == 8, "listener key drifted");
#else
_Static_assert(sizeof(struct tcpaudit_event) == TCPAUDIT_RECORD_SIZE, "record size drifted");
_Static_assert(sizeof(struct tcpaudit_sock_info) == TCPAUDIT_SOCK_INFO_SIZE, "sock_info drifted");
_Static_assert(sizeof(struct tcpaudit_listener_key) == 8, "listener key drifted");
#endif

#endif /* TCPAUDIT_H */

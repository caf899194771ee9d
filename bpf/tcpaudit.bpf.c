// SPDX-License-Identifier: Apache-2.0
/*
 * One record per TCP state change (tp_btf/inet_sock_set_state: BTF tracepoint, no tracefs).
 * Per-socket state gives each connection a stable id and the process that opened it.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "compat.bpf.h"
#include "tcpaudit.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
/* include/net/sock.h */
#define RCV_SHUTDOWN 1
#define SEND_SHUTDOWN 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load. */
const volatile __u64 run_id = 0;
/* Ring size in bytes; past half full we wake the consumer instead of waiting for its timer. */
const volatile __u64 ring_bytes = 0;

/*
 * Load-time filters (0 / empty: no filter). An event is kept when its socket is in
 * filter_netns, either port is in filter_ports, and either address is in filter_cidrs.
 * Filtered events take no sequence number, so a gap still means a lost record.
 */
const volatile __u32 filter_netns = 0;
const volatile __u32 filter_port_count = 0;
const volatile __u16 filter_ports[TCPAUDIT_MAX_PORTS] = {};
const volatile __u32 filter_cidr_count = 0;
const volatile struct tcpaudit_cidr filter_cidrs[TCPAUDIT_MAX_CIDRS] = {};

/* Per-load counters; seq is taken for every kept event so that gaps show lost records. */
__u64 next_seq = 0;
__u64 next_conn = 0;

/* The per-socket state and the listener key are shared with the loader: see tcpaudit.h. */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* replaced by the loader (bpf_map__set_max_entries) */
} events SEC(".maps");

/*
 * Per-socket state in socket-local storage: it lives and dies with the socket, so a reused
 * sock address can never inherit it and a missed TCP_CLOSE leaks nothing; it also costs less
 * than a hash update and delete per connection. A socket that closes and is used again
 * (connect() after a refused connect()) is born again: see `closed`.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tcpaudit_sock_info);
} socks SEC(".maps");

/*
 * Process recorded at listen(), for children that become ESTABLISHED in softirq; the loader
 * seeds the listeners that predate the capture. A plain hash, not an LRU: entries leave at
 * LISTEN->CLOSE, so the map holds live listeners, and an idle one (sshd at night, a seeded
 * one that has not accepted yet) must not be evicted by others. When full, an update fails
 * and counts in TCPAUDIT_LOSS_LISTENER_MAP instead of silently dropping an older listener.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TCPAUDIT_MAX_LISTENERS);
	__type(key, struct tcpaudit_listener_key);
	__type(value, struct tcpaudit_sock_info);
} listeners SEC(".maps");

/* Loss counters, summed over CPUs by the loader (index: enum tcpaudit_loss). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCPAUDIT_LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

static __always_inline void count_loss(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&losses, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no other CPU writes it */
}


static __always_inline void fill_current(struct tcpaudit_sock_info *info, __u8 source)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	info->pid = pid_tgid >> 32;
	info->tid = (__u32)pid_tgid;
	info->uid = (__u32)bpf_get_current_uid_gid();
	info->cgroup_id = bpf_get_current_cgroup_id();
	info->proc_source = source;
	bpf_get_current_comm(info->comm, sizeof(info->comm));
}

/* First sight of a socket: give it a connection id and find the process it belongs to. */
static __always_inline void birth(struct tcpaudit_sock_info *info, __u32 netns,
				  __u16 sport, int oldstate, int newstate)
{
	struct tcpaudit_listener_key lkey = { .netns = netns, .port = sport };
	struct tcpaudit_sock_info *listener;

	__builtin_memset(info, 0, sizeof(*info));
	info->born = 1;
	info->conn_id = __sync_fetch_and_add(&next_conn, 1);
	info->netns = netns;

	/* connect() and listen() run in the owner's context */
	if (oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) {
		info->active = newstate == TCP_SYN_SENT;
		fill_current(info, TCPAUDIT_PROC_OWNER);
		return;
	}

	/* passive open: the child is born in softirq, the listener knows its owner */
	listener = bpf_map_lookup_elem(&listeners, &lkey);
	if (newstate == TCP_SYN_RECV || oldstate == TCP_SYN_RECV || oldstate == TCP_NEW_SYN_RECV) {
		if (listener) {
			info->pid = listener->pid;
			info->tid = listener->tid;
			info->uid = listener->uid;
			info->cgroup_id = listener->cgroup_id;
			info->proc_source = listener->proc_source == TCPAUDIT_PROC_SEEDED ?
					    TCPAUDIT_PROC_SEEDED : TCPAUDIT_PROC_LISTENER;
			__builtin_memcpy(info->comm, listener->comm, sizeof(info->comm));
			return;
		}
	}

	/* a socket that predates us: a listener on its port says it was accepted, not opened */
	info->active = !listener;

	/* current is only meaningful in the owner's syscall */
	if (tcpaudit_syscall_transition(oldstate, newstate))
		fill_current(info, TCPAUDIT_PROC_CURRENT);
}

/* explicit sizes: the record's 16-byte arrays hold 4-byte IPv4 addresses too */
static __always_inline void read_addrs(__u8 *saddr, __u8 *daddr, __u16 family,
				       const struct sock *sk)
{
	if (family == AF_INET) {
		*(__u32 *)saddr = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)daddr = sk->__sk_common.skc_daddr;
	} else {
		__builtin_memcpy(saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(daddr, &sk->__sk_common.skc_v6_daddr, 16);
	}
}

/*
 * Payload bytes. bytes_acked and bytes_received count sequence space, so they include the SYN
 * (an active opener's, acked before any data), our FIN once acked and the peer's FIN once
 * received; a passive child's snd_una starts past its SYN-ACK. bytes_sent has no SYN or FIN
 * but counts retransmissions, so we subtract instead. The FIN is in write_seq from the moment
 * tcp_send_fin() queues it, which is after the transition into FIN-WAIT-1 or LAST-ACK: only
 * later transitions may find it acknowledged. The peer's FIN sets SOCK_DONE (tcp_fin()),
 * after bytes_received has counted it; RCV_SHUTDOWN alone would also be set by close().
 */
static __always_inline void read_counters(struct tcpaudit_event *e, const struct sock *sk,
					  const struct tcp_sock *tp, const struct tcpaudit_sock_info *info,
					  int oldstate)
{
	__u64 acked = 0, received = 0;
	bool fin_sent;

	/* all present since v4.2; guarded so an unusual build fails soft, not at load */
	if (bpf_core_field_exists(tp->bytes_acked))
		acked = tp->bytes_acked;
	if (bpf_core_field_exists(tp->bytes_received))
		received = tp->bytes_received;
	if (bpf_core_field_exists(tp->segs_out))
		e->segs_out = tp->segs_out;
	if (bpf_core_field_exists(tp->segs_in))
		e->segs_in = tp->segs_in;
	e->total_retrans = tp->total_retrans;
	e->srtt_us = tp->srtt_us >> 3;

	if (info->active && acked > 0)
		acked--;

	fin_sent = oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 ||
		   oldstate == TCP_CLOSING || oldstate == TCP_LAST_ACK;
	if (fin_sent && acked > 0 && (sk->sk_shutdown & SEND_SHUTDOWN) &&
	    tp->snd_una == tp->write_seq)
		acked--;

	if (received > 0 && (tcpaudit_sk_flags(sk) & (1UL << SOCK_DONE)))
		received--;

	e->bytes_sent = acked;
	e->bytes_received = received;
}

/* Socket file identity: inode, and the fsgid of whoever opened it; 0 without a file. */
static __always_inline void read_identity(struct tcpaudit_sock_info *info, const struct sock *sk)
{
	struct socket *sock;
	struct file *file;

	if (bpf_core_field_exists(sk->sk_uid))
		info->sock_uid = sk->sk_uid.val;
	if (info->sock_inode)
		return;

	sock = sk->sk_socket;
	if (!sock)
		return;
	file = sock->file;
	if (!file)
		return;
	info->sock_inode = file->f_inode->i_ino;
	if (bpf_core_field_exists(file->f_cred))
		info->sock_gid = file->f_cred->fsgid.val;
}

static __always_inline bool addr_in_cidr(const __u8 *addr, const volatile struct tcpaudit_cidr *c,
					 int len)
{
	__u32 prefix = c->prefix;
	int i;

#pragma unroll
	for (i = 0; i < 16; i++) {
		if (i >= len || prefix == 0)
			break;
		__u8 mask;

		if (prefix >= 8)
			mask = 0xff;
		else
			mask = (__u8)(0xff << (8 - prefix));
		if ((addr[i] & mask) != (c->addr[i] & mask))
			return false;
		prefix = prefix >= 8 ? prefix - 8 : 0;
	}
	return true;
}

/* IPv4 CIDRs also match v4-mapped IPv6 addresses (a dual-stack socket's IPv4 peers). */
static __always_inline bool addr_wanted(const __u8 *addr, __u16 family)
{
	bool mapped = family == AF_INET6 && *(const __u64 *)addr == 0 &&
		      *(const __u32 *)(addr + 8) == bpf_htonl(0xffff);
	const __u8 *v4 = mapped ? addr + 12 : addr;
	bool has_v4 = family == AF_INET || mapped;
	int i;

#pragma unroll
	for (i = 0; i < TCPAUDIT_MAX_CIDRS; i++) {
		if (i >= filter_cidr_count)
			break;
		if (filter_cidrs[i].family == AF_INET6 && family == AF_INET6 &&
		    addr_in_cidr(addr, &filter_cidrs[i], 16))
			return true;
		if (filter_cidrs[i].family == AF_INET && has_v4 &&
		    addr_in_cidr(v4, &filter_cidrs[i], 4))
			return true;
	}
	return false;
}

static __always_inline bool port_wanted(__u16 sport, __u16 dport)
{
	int i;

#pragma unroll
	for (i = 0; i < TCPAUDIT_MAX_PORTS; i++) {
		if (i >= filter_port_count)
			break;
		if (filter_ports[i] == sport || filter_ports[i] == dport)
			return true;
	}
	return false;
}

/*
 * tp_btf hands us `sk` as a trusted BTF pointer: plain loads through it (and through the
 * pointers it leads to) are CO-RE relocated by vmlinux.h's preserve_access_index and checked
 * by the verifier, at the cost of a load each instead of a bpf_probe_read_kernel() call.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct tcpaudit_sock_info fresh, *info;
	struct tcpaudit_event *e;
	struct tcp_sock *tp;
	__u64 seq, avail;
	__u16 family, sport, dport;
	__u32 netns;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;

	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	netns = sk->__sk_common.skc_net.net->ns.inum;
	if (filter_netns && netns != filter_netns)
		return 0;

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;

	/* inet_sport like the tracepoint itself: skc_num is already 0 on some paths to CLOSE */
	sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	dport = bpf_ntohs(sk->__sk_common.skc_dport);

	/* bookkeeping for every socket, kept or not: its owner and identity must be right */
	info = bpf_sk_storage_get(&socks, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!info) {
		/* no memory for storage: this event still goes out, under a one-off conn id */
		count_loss(TCPAUDIT_LOSS_SOCK_MAP);
		fresh.born = 0;
		info = &fresh;
	}
	if (!info->born || info->closed)
		birth(info, netns, sport, oldstate, newstate);
	read_identity(info, sk);
	if (newstate == TCP_CLOSE)
		info->closed = 1;

	if (newstate == TCP_LISTEN) {
		struct tcpaudit_listener_key lkey = { .netns = netns, .port = sport };

		if (bpf_map_update_elem(&listeners, &lkey, info, BPF_ANY))
			count_loss(TCPAUDIT_LOSS_LISTENER_MAP);
	} else if (newstate == TCP_CLOSE && oldstate == TCP_LISTEN) {
		struct tcpaudit_listener_key lkey = { .netns = netns, .port = sport };

		bpf_map_delete_elem(&listeners, &lkey);
	}

	if (filter_port_count && !port_wanted(sport, dport))
		return 0;

	if (filter_cidr_count) {
		__u8 saddr[16] = {}, daddr[16] = {};

		read_addrs(saddr, daddr, family, sk);
		if (!addr_wanted(saddr, family) && !addr_wanted(daddr, family))
			return 0;
	}

	/* taken before the reserve so that a failed reserve leaves a visible gap */
	seq = __sync_fetch_and_add(&next_seq, 1);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(TCPAUDIT_LOSS_RING);
		return 0;
	}

	/* ring memory is not zeroed; holes and unread fields must not leak kernel bytes */
	__builtin_memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->run_id = run_id;
	e->conn_id = info->conn_id;
	e->cgroup_id = info->cgroup_id;
	e->pid = info->pid;
	e->tid = info->tid;
	e->uid = info->uid;
	e->netns = info->netns;
	e->proc_source = info->proc_source;
	__builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
	e->sock_inode = info->sock_inode;
	e->sock_uid = info->sock_uid;
	e->sock_gid = info->sock_gid;
	e->version = TCPAUDIT_LAYOUT_VERSION;
	e->family = family;
	e->sport = sport;
	e->dport = dport;
	e->oldstate = oldstate;
	e->newstate = newstate;
	read_addrs(e->saddr, e->daddr, family, sk);
	read_counters(e, sk, tp, info, oldstate);

	/* no wake-up per event (the consumer drains on a timer) unless the ring fills up */
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, avail > ring_bytes / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

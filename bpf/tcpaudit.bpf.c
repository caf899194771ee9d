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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load. */
const volatile __u64 run_id = 0;
/* Ring size in bytes; past half full we wake the consumer instead of waiting for its timer. */
const volatile __u64 ring_bytes = 0;

/* Per-load counters; seq is taken for every event so that gaps show lost records. */
__u64 next_seq = 0;
__u64 next_conn = 0;

/* Who owns a socket and which connection it belongs to; deleted at TCP_CLOSE. */
struct sock_info {
	__u64 conn_id;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 netns;
	__u8 proc_source;
	__u8 pad[7];
	char comm[TCPAUDIT_COMM_LEN];
};

struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* replaced by the loader (bpf_map__set_max_entries) */
} events SEC(".maps");

/* LRU so that a missed TCP_CLOSE costs an evicted entry, never a full map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64); /* the sock pointer: a key only, never published */
	__type(value, struct sock_info);
} socks SEC(".maps");

/* Process recorded at listen(), for children that become ESTABLISHED in softirq. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listener_key);
	__type(value, struct sock_info);
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

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void fill_current(struct sock_info *info, __u8 source)
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
static __always_inline void birth(struct sock_info *info, const struct sock *sk, __u32 netns,
				  __u16 sport, int oldstate, int newstate)
{
	struct listener_key lkey = { .netns = netns, .port = sport };
	struct sock_info *listener;

	info->conn_id = __sync_fetch_and_add(&next_conn, 1);
	info->netns = netns;

	/* connect() and listen() run in the owner's context */
	if (oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) {
		fill_current(info, TCPAUDIT_PROC_OWNER);
		return;
	}

	/* passive open: the child is born in softirq, the listener knows its owner */
	if (newstate == TCP_SYN_RECV || oldstate == TCP_SYN_RECV || oldstate == TCP_NEW_SYN_RECV) {
		listener = bpf_map_lookup_elem(&listeners, &lkey);
		if (listener) {
			info->pid = listener->pid;
			info->tid = listener->tid;
			info->uid = listener->uid;
			info->cgroup_id = listener->cgroup_id;
			info->proc_source = TCPAUDIT_PROC_LISTENER;
			__builtin_memcpy(info->comm, listener->comm, sizeof(info->comm));
			return;
		}
	}

	/* a socket that predates us: current is only meaningful in the owner's syscall */
	if (tcpaudit_syscall_transition(oldstate, newstate))
		fill_current(info, TCPAUDIT_PROC_CURRENT);
}

/* explicit sizes: the record's 16-byte arrays hold 4-byte IPv4 addresses too */
static __always_inline void read_addrs(struct tcpaudit_event *e, const struct sock *sk)
{
	if (e->family == AF_INET) {
		bpf_core_read(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline void read_counters(struct tcpaudit_event *e, const struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	/* all present since v4.2; guarded so an unusual build fails soft, not at load */
	if (bpf_core_field_exists(tp->bytes_acked))
		e->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	if (bpf_core_field_exists(tp->bytes_received))
		e->bytes_received = BPF_CORE_READ(tp, bytes_received);
	if (bpf_core_field_exists(tp->segs_out))
		e->segs_out = BPF_CORE_READ(tp, segs_out);
	if (bpf_core_field_exists(tp->segs_in))
		e->segs_in = BPF_CORE_READ(tp, segs_in);
	e->total_retrans = BPF_CORE_READ(tp, total_retrans);
	e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sock_info fresh = {}, *info;
	struct tcpaudit_event *e;
	__u64 key = (__u64)sk;
	__u64 seq, avail;
	__u16 family, sport;
	__u32 netns;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;

	/* inet_sport like the tracepoint itself: skc_num is already 0 on some paths to CLOSE */
	sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	netns = sock_netns(sk);

	info = bpf_map_lookup_elem(&socks, &key);
	if (!info) {
		birth(&fresh, sk, netns, sport, oldstate, newstate);
		if (newstate != TCP_CLOSE && bpf_map_update_elem(&socks, &key, &fresh, BPF_ANY))
			count_loss(TCPAUDIT_LOSS_SOCK_MAP);
		info = &fresh;
	}

	if (newstate == TCP_LISTEN) {
		struct listener_key lkey = { .netns = netns, .port = sport };

		if (bpf_map_update_elem(&listeners, &lkey, info, BPF_ANY))
			count_loss(TCPAUDIT_LOSS_LISTENER_MAP);
	}

	/* taken before the reserve so that a failed reserve leaves a visible gap */
	seq = __sync_fetch_and_add(&next_seq, 1);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(TCPAUDIT_LOSS_RING);
		goto out;
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
	e->version = TCPAUDIT_LAYOUT_VERSION;
	e->family = family;
	e->sport = sport;
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->oldstate = oldstate;
	e->newstate = newstate;
	read_addrs(e, sk);
	read_counters(e, sk);

	/* no wake-up per event (the consumer drains on a timer) unless the ring fills up */
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, avail > ring_bytes / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);

out:
	if (newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&socks, &key);
		if (oldstate == TCP_LISTEN) {
			struct listener_key lkey = { .netns = netns, .port = sport };

			bpf_map_delete_elem(&listeners, &lkey);
		}
	}
	return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* Kernel-dependent decisions for tcpaudit.bpf.c, each with the reason that forced it. */
#ifndef TCPAUDIT_COMPAT_BPF_H
#define TCPAUDIT_COMPAT_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

/*
 * Is this transition running in the socket owner's task context?
 *
 * The direct test reads preempt_count through the per-CPU ksym __preempt_count (what
 * bpf_in_interrupt() in newer libbpf does), but the verifier resolves ksym addresses with
 * kallsyms, which lists per-CPU data only with CONFIG_KALLSYMS_ALL. Debian-style and our CI
 * kernels lack it ("ldimm64 failed to find the address for kernel symbol '__preempt_count'",
 * measured on 6.18), and x86 kept preempt_count inside struct pcpu_hot for several releases
 * before 6.15. So we decide by transition instead: these are only ever made by a syscall
 * (connect, listen, close/shutdown) on the socket, so `current` is its user. Packet-driven
 * transitions may run in softirq on top of any task and get no process.
 */
static __always_inline bool tcpaudit_syscall_transition(int oldstate, int newstate)
{
	switch (newstate) {
	case TCP_SYN_SENT:  /* connect() */
	case TCP_LISTEN:    /* listen() */
	case TCP_FIN_WAIT1: /* close()/shutdown() on an established socket */
	case TCP_LAST_ACK:  /* close()/shutdown() after the peer's FIN */
		return true;
	case TCP_CLOSE:     /* close() of a listener; other closes may be packet-driven */
		return oldstate == TCP_LISTEN;
	default:
		return false;
	}
}

/*
 * sk_flags: a member of struct sock in older kernels, a #define for __sk_common.skc_flags in
 * newer ones (6.18 has only skc_flags in its BTF). The ___old flavour lets CO-RE pick
 * whichever the running kernel has. XXX: the commit that moved it was not looked up.
 */
struct sock___old {
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

static __always_inline unsigned long tcpaudit_sk_flags(const struct sock *sk)
{
	const struct sock___old *old = (const void *)sk;

	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return sk->__sk_common.skc_flags;
	if (bpf_core_field_exists(old->sk_flags))
		return old->sk_flags;
	return 0;
}

#endif /* TCPAUDIT_COMPAT_BPF_H */

// SPDX-License-Identifier: GPL-2.0
/* The VNET data path as two tc programs (docs/ebpf.md). Wire format unchanged (DESIGN.md):
 *   outer eth | IPv4 (20) | UDP 1798 (8) | id=2, flags (4) | EtherIP 3vvv (2) | inner frame
 * vnet_encap: tc ingress of a VNET's uplink (veth whose peer is a bridge port).
 * vnet_decap: tc ingress of the underlay device. Anything it does not handle (VARP, relay, fragments,
 *             CSUM_PARTIAL frames, VNETs not on this path) goes up the stack to the gatekeeper's socket.
 * Map layouts are mirrored in layouts.py (one place in Python; tests check sizes). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif

#define VNET_PORT 1798
#define MSG_FRAME 2
#define ETHERIP_VER 3
#define OVERHEAD 48 /* 20 IP + 8 UDP + 4 header + 2 EtherIP + 14 outer eth moved in front */
#define PREFIX_AT 42 /* header starts after outer eth + IP + UDP */
#define MAX_MEMBERS 8
#define ETH_ALEN_ 6
#define EV_MISS 1
#define EV_NO_NEIGH 2
#define CFG_PUNT 1 /* cfg.flags: floods and misses go on to the uplink's own stack (a TAP: the userspace
                      * forwarder floods and resolves them) instead of head-end replication here */
#define CFG_LEARN 2 /* cfg.flags: the socket's reader learns from frames (vnet_decap: learn_first) */

/* Verdict / drop-reason counters: index order = layouts.COUNTERS. */
enum {
	C_ENC_UNICAST, C_ENC_FLOOD, C_ENC_FLOOD_COPY, C_ENC_MISS, C_ENC_NO_UPLINK, C_ENC_PUNT,
	C_ENC_ERR_ROOM, C_ENC_ERR_FIB, C_ENC_NO_NEIGH, C_ENC_TOOBIG, C_ENC_SHORT,
	C_DEC_OK, C_DEC_PASS, C_DEC_UNKNOWN_VNET, C_DEC_NON_MEMBER, C_DEC_MALFORMED, C_DEC_TRUNCATED,
	C_DEC_ERR_ROOM, C_MAX
};

struct cfg {		/* ebs_cfg[0] */
	__be32 local_ip;
	__u32 underlay_ifindex;
	__u32 flags;
	__u32 pad;
};

struct fdb_key {	/* ebs_fdb key */
	__u32 vnet;
	__u8 mac[ETH_ALEN_];
	__u8 pad[2];
};

struct fdb_val {
	__be32 ip;
	__u32 pad;
};

struct local_val {	/* ebs_local[vnet]: where decapped frames go */
	__u32 ifindex;
	__u32 redirect_flags;
	__u32 mtu;
	__u32 punt_ifindex; /* CFG_PUNT from another uplink of the VNET: redirect to this one's egress */
};

struct members_val {	/* ebs_members[vnet]: underlay IPs of every member host (self included) */
	__u32 n;
	__be32 ip[MAX_MEMBERS];
};

struct vstats {		/* ebs_vstats[vnet], per CPU: what BPF carried for the VNET */
	__u64 tx_frames;
	__u64 tx_bytes;
	__u64 rx_frames;
	__u64 rx_bytes;
};

struct event {		/* ring buffer record */
	__u32 kind;
	__u32 vnet;
	__u8 mac[ETH_ALEN_];
	__u8 pad[2];
	__be32 ip;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cfg);
} ebs_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);	/* uplink ifindex */
	__type(value, __u32);	/* vnet */
} ebs_uplink SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct local_val);
} ebs_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct members_val);
} ebs_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fdb_key);
	__type(value, struct fdb_val);
} ebs_fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ebs_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct vstats);
} ebs_vstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} ebs_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fdb_key);
	__type(value, __u64);	/* last report, ns */
} ebs_miss_rl SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ebs_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void vcount(__u32 vnet, int rx, __u64 bytes)
{
	struct vstats *v = bpf_map_lookup_elem(&ebs_vstats, &vnet);

	if (!v) {
		struct vstats zero = {};

		bpf_map_update_elem(&ebs_vstats, &vnet, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&ebs_vstats, &vnet);
		if (!v)
			return;
	}
	if (rx) {
		v->rx_frames += 1;
		v->rx_bytes += bytes;
	} else {
		v->tx_frames += 1;
		v->tx_bytes += bytes;
	}
}

static __always_inline void report(__u32 kind, struct fdb_key *k, __be32 ip)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&ebs_miss_rl, k);
	struct event *e;

	if (kind == EV_MISS) {
		if (last && now - *last < 1000000000ULL)
			return;
		bpf_map_update_elem(&ebs_miss_rl, k, &now, BPF_ANY);
	}
	e = bpf_ringbuf_reserve(&ebs_events, sizeof(*e), 0);
	if (!e)
		return;
	e->kind = kind;
	e->vnet = k->vnet;
	__builtin_memcpy(e->mac, k->mac, ETH_ALEN_);
	e->pad[0] = e->pad[1] = 0;
	e->ip = ip;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u16 ip_csum(const void *ip)
{
	const __u16 *w = ip;
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct outer {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__be16 id;
	__be16 flags;
	__be16 etherip;
} __attribute__((packed));

/* Write outer headers for `dst`; returns the egress ifindex or <0 (counted). */
static __always_inline int write_outer(struct __sk_buff *skb, struct cfg *c, __u32 vnet, __be32 dst,
				       struct fdb_key *k)
{
	struct bpf_fib_lookup fib = {};
	struct outer o = {};
	long rc;

	fib.family = 2; /* AF_INET */
	fib.ipv4_src = c->local_ip;
	fib.ipv4_dst = dst;
	fib.ifindex = c->underlay_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(C_ENC_NO_NEIGH);
		report(EV_NO_NEIGH, k, dst);
		return -1;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(C_ENC_ERR_FIB);
		return -1;
	}
	if (!skb->gso_size && skb->len > fib.mtu_result + 14) {
		count(C_ENC_TOOBIG);
		return -1;
	}
	__builtin_memcpy(o.eth.h_dest, fib.dmac, ETH_ALEN_);
	__builtin_memcpy(o.eth.h_source, fib.smac, ETH_ALEN_);
	o.eth.h_proto = bpf_htons(ETH_P_IP);
	o.ip.version = 4;
	o.ip.ihl = 5;
	o.ip.tot_len = bpf_htons(skb->len - 14);
	o.ip.frag_off = bpf_htons(0x4000); /* DF */
	o.ip.ttl = 64;
	o.ip.protocol = IPPROTO_UDP;
	o.ip.saddr = c->local_ip;
	o.ip.daddr = dst;
	o.ip.check = ip_csum((const __u8 *)&o + sizeof(struct ethhdr));
	o.udp.source = bpf_htons(VNET_PORT);
	o.udp.dest = bpf_htons(VNET_PORT);
	o.udp.len = bpf_htons(skb->len - 34);
	o.id = bpf_htons(MSG_FRAME);
	o.etherip = bpf_htons((ETHERIP_VER << 12) | (vnet & 0xfff));
	if (bpf_skb_store_bytes(skb, 0, &o, sizeof(o), 0))
		return -1;
	return fib.ifindex;
}

static __always_inline int make_room(struct __sk_buff *skb, struct ethhdr *inner)
{
	__u64 fl = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		   BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(14);

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_adjust_room(skb, OVERHEAD, BPF_ADJ_ROOM_MAC, fl))
			return -1;
		/* the helper opened the gap after the first 14 bytes: put the inner header there */
		return bpf_skb_store_bytes(skb, OVERHEAD, inner, sizeof(*inner), 0) ? -1 : 0;
	}
	if (skb->gso_size) /* a non-IPv4 GSO frame: leave to the slow path */
		return -1;
	return bpf_skb_change_head(skb, OVERHEAD, 0) ? -1 : 0;
}

static __always_inline int flood(struct __sk_buff *skb, struct cfg *c, __u32 vnet, struct fdb_key *k)
{
	struct members_val *m = bpf_map_lookup_elem(&ebs_members, &vnet);
	int oif;

	if (!m)
		return TC_ACT_SHOT;
	count(C_ENC_FLOOD);
#pragma unroll
	for (int i = 0; i < MAX_MEMBERS; i++) {
		__be32 ip;

		if (i >= m->n)
			break;
		ip = m->ip[i];
		if (ip == c->local_ip)
			continue;
		oif = write_outer(skb, c, vnet, ip, k);
		if (oif < 0)
			continue;
		if (bpf_clone_redirect(skb, oif, 0) == 0)
			count(C_ENC_FLOOD_COPY);
	}
	return TC_ACT_SHOT;
}

static __always_inline int neigh_ready(struct __sk_buff *skb, struct cfg *c, __be32 dst)
{
	struct bpf_fib_lookup fib = {};

	fib.family = 2; /* AF_INET */
	fib.ipv4_src = c->local_ip;
	fib.ipv4_dst = dst;
	fib.ifindex = c->underlay_ifindex;
	return bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_NO_NEIGH;
}

/* A frame BPF does not send itself (miss, flood, unresolved neighbour) under CFG_PUNT: it goes on
 * to the uplink's stack (the TAP: the userspace forwarder), or, from a second uplink of the VNET
 * (the veth pair that merges decapsulated frames by GRO), to the TAP's egress. */
static __always_inline int punt(struct __sk_buff *skb, __u32 vnet)
{
	struct local_val *l = bpf_map_lookup_elem(&ebs_local, &vnet);

	count(C_ENC_PUNT);
	if (l && l->punt_ifindex && l->punt_ifindex != skb->ifindex)
		return bpf_redirect(l->punt_ifindex, 0);
	return TC_ACT_OK;
}

SEC("tc")
int vnet_encap(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	struct fdb_key k = {};
	struct ethhdr inner;
	struct fdb_val *f;
	struct cfg *c;
	__u32 *vnet;
	int oif;

	vnet = bpf_map_lookup_elem(&ebs_uplink, &ifindex);
	c = bpf_map_lookup_elem(&ebs_cfg, &zero);
	if (!vnet || !c) {
		count(C_ENC_NO_UPLINK);
		return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, 0, &inner, sizeof(inner))) {
		count(C_ENC_SHORT);
		return TC_ACT_SHOT;
	}
	k.vnet = *vnet;
	__builtin_memcpy(k.mac, inner.h_dest, ETH_ALEN_);
	f = (inner.h_dest[0] & 1) ? 0 : bpf_map_lookup_elem(&ebs_fdb, &k);
	if (!f && !(inner.h_dest[0] & 1)) {
		count(C_ENC_MISS);
		report(EV_MISS, &k, 0);
	}
	if (!f && (c->flags & CFG_PUNT))
		return punt(skb, k.vnet);
	if (f && (c->flags & CFG_PUNT) && !neigh_ready(skb, c, f->ip)) {
		/* underlay neighbour unresolved: the forwarder's socket send makes the kernel resolve it */
		count(C_ENC_NO_NEIGH);
		return punt(skb, k.vnet);
	}
	if (make_room(skb, &inner)) {
		count(C_ENC_ERR_ROOM);
		return TC_ACT_SHOT;
	}
	if (!f)
		return flood(skb, c, k.vnet, &k);
	oif = write_outer(skb, c, k.vnet, f->ip, &k);
	if (oif < 0)
		return TC_ACT_SHOT;
	count(C_ENC_UNICAST);
	vcount(k.vnet, 0, skb->len - OVERHEAD);
	return bpf_redirect(oif, 0);
}

static __always_inline int is_member(__u32 vnet, __be32 ip)
{
	struct members_val *m = bpf_map_lookup_elem(&ebs_members, &vnet);

	if (!m)
		return 0;
	if (m->n == 0) /* no member list (the VNET is on this host only so far): any sender, as in userspace */
		return 1;
#pragma unroll
	for (int i = 0; i < MAX_MEMBERS; i++) {
		if (i >= m->n)
			break;
		if (m->ip[i] == ip)
			return 1;
	}
	return 0;
}

#define NOT_OURS (-2)

/* A GSO skb at the underlay's ingress is either one tunnel super-frame (our encap's, crossing a
 * veth whole: its inner IPv4 length covers the whole skb) or several 1798 datagrams merged into
 * one UDP GSO skb (the NIC's GRO for the forwarder's UDP_GRO socket, or a sender's UDP_SEGMENT
 * batch over a veth). adjust_room would strip only the first header of the latter and deliver
 * the rest as trailing bytes: such batches go up to the socket, which splits them. */
static __always_inline int one_superframe(struct __sk_buff *skb)
{
	struct {
		__be16 proto;
		__u8 vihl, tos;
		__be16 tot_len;
	} in;

	if (bpf_skb_load_bytes(skb, OVERHEAD + 12, &in, sizeof(in)))
		return 0;
	return in.proto == bpf_htons(ETH_P_IP) && OVERHEAD + 14 + bpf_ntohs(in.tot_len) == skb->len;
}

/* Returns the VNET id of a frame message this program handles, 0 to pass a 1798 message up
 * (counted), NOT_OURS for other traffic (not counted), -1 to drop (counted by reason). */
static __always_inline int classify(struct __sk_buff *skb, struct cfg *c)
{
	struct outer o;
	__u16 vword;

	if (bpf_skb_load_bytes(skb, 0, &o, sizeof(struct ethhdr) + sizeof(struct iphdr) + 8))
		return NOT_OURS;
	if (o.eth.h_proto != bpf_htons(ETH_P_IP) || o.ip.version != 4 || o.ip.protocol != IPPROTO_UDP ||
	    o.ip.daddr != c->local_ip)
		return NOT_OURS;
	/* IP options, fragments (the stack reassembles them for the socket), other ports */
	if (o.ip.ihl != 5 || (o.ip.frag_off & bpf_htons(0x3fff)) || o.udp.dest != bpf_htons(VNET_PORT))
		return NOT_OURS;
	if (bpf_ntohs(o.udp.len) < 8 + 4) /* not even a message header: the socket rejects it */
		return 0;
	if (bpf_skb_load_bytes(skb, PREFIX_AT, &o.id, 4))
		return 0;
	if (o.id != bpf_htons(MSG_FRAME))
		return 0; /* VARP, relay, ...: the gatekeeper's socket */
	if (o.flags) /* CSUM_PARTIAL (slow path) or unknown flags (the socket rejects them) */
		return 0;
	if (skb->gso_segs > 1 && !one_superframe(skb))
		return 0; /* several datagrams merged into one skb: the socket splits them */
	if (bpf_ntohs(o.udp.len) < 8 + 6 + 14 || skb->len < OVERHEAD + 14) {
		count(C_DEC_TRUNCATED);
		return -1;
	}
	if (bpf_skb_load_bytes(skb, PREFIX_AT + 4, &vword, 2)) {
		count(C_DEC_TRUNCATED);
		return -1;
	}
	vword = bpf_ntohs(vword);
	if ((vword >> 12) != ETHERIP_VER || (vword & 0xfff) == 0) {
		count(C_DEC_MALFORMED);
		return -1;
	}
	if (!bpf_map_lookup_elem(&ebs_local, &(__u32){vword & 0xfff})) {
		count(C_DEC_UNKNOWN_VNET);
		return 0; /* maybe a userspace VNET: the socket decides */
	}
	if (!is_member(vword & 0xfff, o.ip.saddr)) {
		count(C_DEC_NON_MEMBER);
		return -1;
	}
	return vword & 0xfff;
}

/* Under CFG_LEARN (the gatekeeper's forwarder learns where MACs live from the frames it receives): a
 * flooded frame (broadcast or multicast destination) whose unicast source MAC ebs_fdb does not place
 * at its sender, i.e. a MAC new to this host or one that moved (a migrated VM's self-announcing RARP,
 * flooded by its new host), goes up to the socket: the receiver learns it into the VARP cache, which
 * writes ebs_fdb at once, and delivers the frame. Later floods from that MAC stay here; unicast
 * frames are never held back. Without it, a host flooding by unicast copies (varp flood = members)
 * redirected a migrated VM's traffic only at its new host's ANNOUNCE (docs/ebpf.md, item 3). */
static __always_inline int learn_first(struct __sk_buff *skb, __u32 vnet, struct ethhdr *inner)
{
	struct fdb_key k = {};
	struct fdb_val *f;
	__be32 saddr;

	if (!(inner->h_dest[0] & 1) || (inner->h_source[0] & 1))
		return 0;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + 12, &saddr, sizeof(saddr)))
		return 0;
	k.vnet = vnet;
	__builtin_memcpy(k.mac, inner->h_source, ETH_ALEN_);
	f = bpf_map_lookup_elem(&ebs_fdb, &k);
	return !f || f->ip != saddr;
}

SEC("tc")
int vnet_decap(struct __sk_buff *skb)
{
	__u64 fl = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
	struct local_val *dst;
	struct ethhdr inner;
	__u32 zero = 0, vnet;
	struct cfg *c;
	int v;

	c = bpf_map_lookup_elem(&ebs_cfg, &zero);
	if (!c)
		return TC_ACT_OK;
	v = classify(skb, c);
	if (v == NOT_OURS)
		return TC_ACT_OK;
	if (v == 0) {
		count(C_DEC_PASS);
		return TC_ACT_OK;
	}
	if (v < 0)
		return TC_ACT_SHOT;
	vnet = v;
	dst = bpf_map_lookup_elem(&ebs_local, &vnet);
	if (!dst || bpf_skb_load_bytes(skb, OVERHEAD, &inner, sizeof(inner))) {
		count(C_DEC_TRUNCATED);
		return TC_ACT_SHOT;
	}
	if ((c->flags & CFG_LEARN) && learn_first(skb, vnet, &inner)) {
		count(C_DEC_PASS);
		return TC_ACT_OK;
	}
	if (bpf_skb_adjust_room(skb, -OVERHEAD, BPF_ADJ_ROOM_MAC, fl) ||
	    bpf_skb_store_bytes(skb, 0, &inner, sizeof(inner), 0)) {
		count(C_DEC_ERR_ROOM);
		return TC_ACT_SHOT;
	}
	count(C_DEC_OK);
	vcount(vnet, 1, skb->len);
	return bpf_redirect(dst->ifindex, dst->redirect_flags);
}

char LICENSE[] SEC("license") = "GPL";

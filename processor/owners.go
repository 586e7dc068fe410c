package processor

import (
	"encoding/json"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Owners of partitions, shared through the consumer group the way Kafka
// Streams shares application.server: each member puts its advertised
// address (Config.Advertise) in its join metadata, the group leader puts
// the map address → assigned partitions in every member's assignment, and
// each member learns from it who owns every partition as of the latest
// rebalance. The balancing itself is franz-go's cooperative-sticky,
// unchanged: the address travels in the consumer protocol's user data,
// behind a marker, and is taken off before the inner balancer reads it.

// ownersMagic marks user data that carries decider's addresses.
const ownersMagic = "decider-owners/1\x00"

// ownersBalancer wraps a group balancer to share owners' addresses.
type ownersBalancer struct {
	kgo.GroupBalancer
	w *Worker
}

// JoinGroupMetadata adds this member's address to the inner metadata.
func (b ownersBalancer) JoinGroupMetadata(interests []string, current map[string][]int32, generation int32) []byte {
	inner := b.GroupBalancer.JoinGroupMetadata(interests, current, generation)
	var meta kmsg.ConsumerMemberMetadata
	if err := meta.ReadFrom(inner); err != nil {
		return inner
	}
	meta.UserData = wrapUserData(b.w.cfg.Advertise, meta.UserData)
	return meta.AppendTo(nil)
}

// wrapUserData prefixes data with the marker and addr.
func wrapUserData(addr string, data []byte) []byte {
	out := append([]byte(ownersMagic), addr...)
	out = append(out, 0)
	return append(out, data...)
}

// unwrapUserData splits what wrapUserData joined; ok is false for data
// without the marker (from a member of an older version).
func unwrapUserData(data []byte) (addr string, inner []byte, ok bool) {
	rest, ok := strings.CutPrefix(string(data), ownersMagic)
	if !ok {
		return "", data, false
	}
	addr, _, ok = strings.Cut(rest, "\x00")
	if !ok {
		return "", data, false
	}
	return addr, data[len(ownersMagic)+len(addr)+1:], true
}

// MemberBalancer (on the leader) takes every member's address off its
// metadata before the inner balancer reads it.
func (b ownersBalancer) MemberBalancer(members []kmsg.JoinGroupResponseMember) (kgo.GroupMemberBalancer, map[string]struct{}, error) {
	addrs := make(map[string]string, len(members))
	stripped := make([]kmsg.JoinGroupResponseMember, len(members))
	for i, m := range members {
		stripped[i] = m
		var meta kmsg.ConsumerMemberMetadata
		if err := meta.ReadFrom(m.ProtocolMetadata); err != nil {
			continue // the inner balancer reports it
		}
		addr, inner, ok := unwrapUserData(meta.UserData)
		if !ok {
			continue
		}
		addrs[m.MemberID] = addr
		meta.UserData = inner
		stripped[i].ProtocolMetadata = meta.AppendTo(nil)
	}
	mb, topics, err := b.GroupBalancer.MemberBalancer(stripped)
	return ownersMemberBalancer{mb, addrs}, topics, err
}

// ParseSyncAssignment learns the owners map from this member's assignment.
func (b ownersBalancer) ParseSyncAssignment(assignment []byte) (map[string][]int32, error) {
	var a kmsg.ConsumerMemberAssignment
	var m map[string]map[string][]int32 // none: a leader of an older version
	if err := a.ReadFrom(assignment); err == nil {
		if _, owners, ok := unwrapUserData(a.UserData); ok && json.Unmarshal(owners, &m) != nil {
			m = nil
		}
	}
	b.w.setOwners(m)
	return b.GroupBalancer.ParseSyncAssignment(assignment)
}

// ownersMemberBalancer balances with the inner balancer, then adds the
// owners map to every assignment.
type ownersMemberBalancer struct {
	kgo.GroupMemberBalancer
	addrs map[string]string // member id → address
}

// SetBalanceInfo passes the group's information to the inner balancer.
func (b ownersMemberBalancer) SetBalanceInfo(info kgo.BalanceInfo) {
	if ib, ok := b.GroupMemberBalancer.(kgo.GroupMemberBalancerInfo); ok {
		ib.SetBalanceInfo(info)
	}
}

// BalanceOrError balances with the inner balancer.
func (b ownersMemberBalancer) BalanceOrError(topics map[string]int32) (kgo.IntoSyncAssignment, error) {
	if eb, ok := b.GroupMemberBalancer.(kgo.GroupMemberBalancerOrError); ok {
		into, err := eb.BalanceOrError(topics)
		if err != nil {
			return nil, err
		}
		return ownersPlan{into, b.addrs}, nil
	}
	return ownersPlan{b.GroupMemberBalancer.Balance(topics), b.addrs}, nil
}

// ownersPlan is a balance plan with the owners map in every assignment.
type ownersPlan struct {
	inner kgo.IntoSyncAssignment
	addrs map[string]string
}

// IntoSyncAssignment encodes the plan, then adds to each member's
// assignment the map address → topic → partitions of every member.
func (p ownersPlan) IntoSyncAssignment() []kmsg.SyncGroupRequestGroupAssignment {
	out := p.inner.IntoSyncAssignment()
	owners := map[string]map[string][]int32{}
	parsed := make([]kmsg.ConsumerMemberAssignment, len(out))
	for i, sa := range out {
		if err := parsed[i].ReadFrom(sa.MemberAssignment); err != nil {
			return out // not the consumer protocol: leave it alone
		}
		addr := p.addrs[sa.MemberID]
		if addr == "" {
			continue
		}
		if owners[addr] == nil {
			owners[addr] = map[string][]int32{}
		}
		for _, t := range parsed[i].Topics {
			owners[addr][t.Topic] = append(owners[addr][t.Topic], t.Partitions...)
		}
	}
	js, _ := json.Marshal(owners) // maps of strings and ints always encode
	for i := range out {
		parsed[i].UserData = wrapUserData("", js)
		out[i].MemberAssignment = parsed[i].AppendTo(nil)
	}
	return out
}

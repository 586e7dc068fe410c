// Package topology declares a decider app: its aggregate types, each with a
// domain Decider (Initial, Decide, Evolve), its Avro schemas, its partition
// count and its five topics, and it creates and verifies those topics.
//
// A domain author writes a Decider and a Spec and never sees Kafka:
//
//	account, err := topology.NewAggregate(topology.Spec[State, Command, Event]{
//		Name: "account", Schemas: reg, State: "bank.Account",
//		Commands: []string{"bank.Deposit"}, Events: []string{"bank.Deposited"},
//		Decider: topology.Decider[State, Command, Event]{Decide: decide, Evolve: evolve},
//	})
//	app, err := topology.NewApp("bank", account)
//
// Everything is checked when the app is built, not when the first command
// arrives: names, schemas bound to Go types, and Go types that fit the
// decider's type parameters. Topics of one aggregate type are
// co-partitioned (commands, events and snapshots share a partition count
// that never changes); EnsureTopics refuses an existing topic whose count
// differs, with a PartitionMismatchError naming the topic and both counts.
//
// Partition is the partitioner every participant must agree on: murmur2 of
// the aggregate id, as the Java client and librdkafka's murmur2_random.
package topology

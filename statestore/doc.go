// Package statestore is a worker's local state: a Pebble database that holds
// the latest snapshot of every aggregate by (aggregate type, partition, id),
// and per partition a checkpoint, the next offset of the changelog (the
// A.T.snapshots topic) that the store does not reflect yet.
//
// The store is a cache of the changelog, never a second source of truth:
//
//   - The processor collects a transaction's snapshots in an Overlay and
//     writes them (Writes, or Apply) only after Kafka committed the
//     transaction, and a partition's checkpoint only with or after the
//     snapshots it stands for, so the store is always a prefix of the
//     committed changelog of each partition: never ahead of Kafka,
//     possibly behind (the processor writes its snapshots back from a cache
//     of its own, see the processor's checkpoints.go). Pebble runs without
//     its write-ahead log by default (Options.WAL): a crashed process loses
//     the writes still in memory, and what is on disk is still such a
//     prefix, a step further behind: writes reach the disk in the order
//     they were committed.
//   - Restore catches a partition up from its checkpoint to the changelog's
//     high watermark (read_committed, so it waits for open transactions to
//     end and keeps only committed snapshots). A checkpoint that no longer fits
//     the log (below its start, or past its end) drops the partition's
//     state and restores it fully; it never continues from a silently
//     partial store. It writes what it reads in chunks, each sorted into a
//     table that Pebble ingests atomically with the partition's checkpoint
//     (no memtable, WAL, flush or compaction of a fresh store's data). It
//     reads with Fetch requests of its own and takes keys and values as
//     slices of the fetched batches (no client record per snapshot),
//     filtering aborted transactions as a read_committed consumer does.
//
// The package knows nothing of consumer groups: it reads one changelog
// partition with a plain client.
package statestore

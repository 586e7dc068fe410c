// Package processor is decider's worker: a member of an app's consumer group
// that owns some partitions of its commands topics and turns each command
// into events, a snapshot and a reply, exactly once.
//
// # The transaction
//
// A Worker is one franz-go client, a group consumer and a transactional
// producer with the transactional id "<app>-<instance>" (stable across
// restarts: a restarted instance fences its former self), whose
// transactions it ends itself (internal/kafkatxn tells how, and why not
// with kgo.GroupTransactSession). Each batch (at most MaxPollRecords
// commands, from one poll or from the polls made while the transaction
// before it ended, step 6) is one transaction:
//
//  1. Decide. For each partition in the batch, in parallel with the others
//     (on the session's pool of goroutines, one per CPU), once the
//     partition is restored (a partition holding much of a poll is decided
//     in several shares, each with some of its aggregates, also in
//     parallel): each command in offset order is read (headers,
//     then payload), its aggregate's state is looked up — the batch's
//     overlay, else the overlay of the batch before it if that one's
//     transaction is still ending (step 6), else the cache of committed
//     snapshots, else the Pebble store, else the initial state — and Decide
//     and Evolve run. The outputs are records for partition p of A.T.events
//     with versions v+1…, and the reply for ce_replyto; they wait in the
//     batch's arenas (arena.go). The new state goes into the overlay, so
//     the next command of the same aggregate in the batch sees it. At the
//     end of the partition's share, the last state of each aggregate it
//     touched becomes a record for partition p of A.T.snapshots: one
//     snapshot per aggregate per transaction, as Kafka Streams' record
//     cache writes its changelog.
//  2. Begin, produce the batch's records, and send the batch's consumer
//     offsets into the transaction (TxnOffsetCommit, KIP-447: with the
//     group generation, so a worker that lost its partitions cannot commit
//     them). The rest of the batch's transaction, steps 3 to 5, runs beside
//     the poll loop.
//  3. Flush, and wait for every record's acknowledgement and for the
//     offsets. Any failed record makes the transaction abort: deciding to
//     commit before every record is known written would commit offsets
//     without their records.
//  4. End: EndTxn, a commit unless a record or the offsets failed or
//     partitions were revoked or lost since the transaction began.
//  5. Committed: once the next batch's transaction has begun (step 6),
//     so that this is not in the cycle of transactions (at once when no
//     command came meanwhile), the loop puts the overlays' snapshots in
//     the state cache (copied), which writes them back to Pebble later,
//     each aggregate once however many transactions changed it meanwhile:
//     when it evicts them, or when the sweep that follows every committed
//     batch passes them.
//     Each partition's checkpoint (the changelog offset from which its
//     changelog must be read again) moves on at the end of each round of
//     the sweep (checkpoints.go tells why the store stays a prefix of the
//     changelog). A snapshot too big for the cache is written to Pebble
//     at once, in one Pebble batch with what the cache let go of; until
//     that batch is committed, the cache still serves what it let go of.
//     The batch's records and bytes are then reused. Only now: neither the
//     cache nor Pebble holds state of a transaction that did not commit.
//     Aborted: the overlays are dropped, and the session rewinds to the
//     batch's first commands; they are decided again, deterministically.
//     (The cache holds bytes, never a decoded state, so a domain function
//     that changed a state in place cannot leave it in the cache.)
//  6. Meanwhile the loop polls the next commands while the batch's records
//     are flushed, as they come (franz-go sends a partition's next fetch
//     only once its last one was polled), and decides them (step 1) while
//     the batch's transaction ends; what comes during its EndTxn it
//     decides as it comes, after them and on their results. Once the end
//     is known, what the client buffered meanwhile joins the next batch
//     too unless that is a full poll, so that no command waits for one
//     transaction more (decided on the overlays of the batch that
//     committed, not applied yet). The next batch then begins, and the one
//     that committed is applied (step 5);
//     if the transaction did not commit, what was polled beside it
//     (decided, on state that never was, or not) is dropped unproduced, and
//     the commands of both are polled again: the worker sets the client's
//     position back to the first commands that did not commit. A batch
//     decided beside an End during which one of its partitions was revoked
//     is dropped the same way even when that End committed: the End clears
//     the session's mark that would abort the next transaction.
//
// # Recovery
//
// On assignment, a partition is restored before any of its commands is
// decided: the store reads the partition's changelog from its checkpoint to
// the high watermark, read_committed (see statestore.Store.Restore). The
// restore runs beside the poll loop, with the partition's fetching paused
// until it is done, and is cancelled by a revoke or the end of the session;
// a poll that holds commands of a partition still restoring waits for it.
// On revoke or loss the open transaction aborts (the session does that), the
// overlay is dropped, and the local state is kept: it is a valid prefix of the
// changelog for when the partition returns. The snapshots of the partition
// that the state cache had not written back yet are never written (a later
// owner may have moved the aggregates on by then): the partition's
// checkpoint covers them, and its next restore reads them from the
// changelog, as it does the snapshots of a batch that committed after its
// partition was revoked. A restore reads at most about twice
// Config.CheckpointBytes of snapshots more than the store lacks; a worker
// that stops cleanly writes its cache back first, and restores nothing of
// the partitions it held then.
//
// Defence in depth against lost or reset group offsets (KAFKA-20416): every
// snapshot records the offset of the last command applied to its aggregate,
// and a command at or below it is skipped, whatever the committed offsets
// say. Every snapshot also keeps the aggregate's last DedupeWindow replies
// (each without the aggregate id, which the snapshot holds once): a command
// id seen again gets its first reply again and writes no event (only its
// snapshot, which moves on to its offset). Every decided command
// is in its aggregate's snapshot of that transaction, also one that changed
// nothing, so that both defences cover it.
//
// # What the worker does on each kind of error
//
//   - Bad input (no key, missing, unknown or oversized headers or key, bad
//     framing, unknown schema, undecodable payload, oversized payload): an
//     INVALID reply when ce_replyto and a ce_id of at most 256 bytes are
//     readable, a copy in A.T.dlq with headers saying why and where it came
//     from (without the payload when it was too large), and the partition
//     goes on. Keys, ids and headers are bounded so that no record the
//     worker writes for a command can outgrow what the broker accepts.
//   - A handler that panics or returns an error that is not a
//     topology.Rejection, or an event or state that does not encode: a
//     FAILED reply and a dead-letter copy; the aggregate is unchanged.
//   - A command on the wrong partition (a producer with another
//     partitioner): forwarded in the transaction to the partition its key
//     hashes to, decided there.
//   - A reply topic that does not exist: the command is decided, the reply is
//     dropped with a warning (producing to it would fail every transaction).
//     Any other failure to look the reply topic up aborts the transaction,
//     which is redone: a committed command never loses its reply to it.
//   - A produce error, a TxnOffsetCommit or EndTxn error, a rebalance during
//     the batch: abort and redo from the committed offsets. A commit that was
//     tried and not reported done may still have happened (an EndTxn whose
//     answer was lost), so the batch's partitions are restored again from
//     the changelog, which holds the truth, before they go on.
//   - A fenced producer (the coordinator aborted a transaction that outlived
//     TransactionTimeout while the process was paused, or another process
//     has this instance's transactional id): the worker leaves the group,
//     re-initialises its producer and rejoins; nothing it had not committed
//     counts.
//   - A Pebble write that fails after a commit: Run returns the error; a
//     restarted worker restores from its checkpoint.
//   - Topics whose partition counts do not fit the app: Run refuses to start.
//
// A cancelled context (SIGTERM) finishes the batch whose transaction is
// ending, commits it and leaves the group; a batch decided beside it but
// not begun is dropped, and whoever owns its partitions next decides its
// commands.
package processor

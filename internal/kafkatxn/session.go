// Package kafkatxn runs a group consumer and transactional producer whose
// transactions it ends with EndTxn alone, the consumer offsets having been
// sent into the transaction beside the flush: decider's worker, and the
// reference loop of `decider bench`, which must end its transactions as
// the worker does to be its limit. Its tests run through the worker's
// (processor: TestRevokeAbortsTheTransaction, TestTransactionsBeforeKIP890,
// TestFailedTransactionLeavesNoTrace) and the chaos tests (cmd/decider).
package kafkatxn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Session is a group consumer and transactional producer, one kgo.Client,
// whose transactions it ends itself rather than through
// kgo.GroupTransactSession. That session's End sends the consumer offsets,
// then a heartbeat, then EndTxn, each waiting for the one before, after the
// flush. A batch's offsets are known before its records are produced, so
// this session's user sends them into the transaction beside the flush
// (CommitOffsets) and ends it with EndTxn alone (End): at 1k commands/s the
// end after the flush took ≈ 0.35 instead of ≈ 0.7 ms.
//
// What GroupTransactSession promises, it keeps:
//   - A transaction during which partitions were revoked or lost aborts:
//     the callbacks set revoked under mu, and End holds mu from reading it
//     through EndTxn, so a rebalance waits for a transaction that is ending.
//   - The offsets carry the group's generation and member id (KIP-447): a
//     worker that lost its partitions cannot commit them; and franz-go
//     fetches a new owner's offsets as stable ones, so that owner waits for
//     a transaction that is still open.
//
// What it leaves out:
//   - The heartbeat between the offsets and EndTxn. It makes sure the
//     member is still in the group before EndTxn; with KIP-447 (Kafka 2.5
//     and later) the generation check of the offsets and the stable offset
//     fetch already keep another member from going on from them before the
//     transaction is over.
//   - Moving the client's position at an end (GroupTransactSession sets it
//     to the offsets committed): the user sets it back after an abort
//     (decider's worker: Worker.rewind), and after a commit it is already
//     past them, so the commands polled during an end are not polled again.
type Session struct {
	cl    *kgo.Client
	group string
	txnID string
	log   *slog.Logger

	mu      sync.Mutex
	revoked bool // partitions were revoked or lost since the last end
	kip890  int8 // 0 until known; 1 if TxnOffsetCommit adds the offsets to the transaction itself (KIP-890 part 2), -1 if AddOffsetsToTxn must
}

// New makes the session's client with opts, in group with the
// transactional id txnID, and onRevoked as its callback for partitions
// revoked or lost.
func New(opts []kgo.Opt, group, txnID string, log *slog.Logger, onRevoked func(context.Context, *kgo.Client, map[string][]int32)) (*Session, error) {
	s := &Session{group: group, txnID: txnID, log: log}
	lost := func(ctx context.Context, cl *kgo.Client, parts map[string][]int32) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.revoked = true
		onRevoked(ctx, cl, parts)
	}
	revoked := func(ctx context.Context, cl *kgo.Client, parts map[string][]int32) {
		if len(parts) == 0 { // a cooperative rebalance that took nothing
			onRevoked(ctx, cl, parts)
			return
		}
		lost(ctx, cl, parts)
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumerGroup(group),
		kgo.TransactionalID(txnID),
		kgo.OnPartitionsRevoked(revoked),
		kgo.OnPartitionsLost(lost),
	)...)
	if err != nil {
		return nil, err
	}
	s.cl = cl
	return s, nil
}

// CommitOffsets puts the offsets after the records of fetches in the open
// transaction, for the group's current generation. An error makes the
// transaction abort, and the protocol be asked again for the next one (a
// cluster whose transaction.version was raised meanwhile).
func (s *Session) CommitOffsets(ctx context.Context, fetches kgo.Fetches) (err error) {
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.kip890 = 0
			s.mu.Unlock()
		}
	}()
	member, generation := s.cl.GroupMetadata()
	id, epoch, err := s.cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("producer id: %w", err)
	}
	kip890, err := s.kip890p2(ctx)
	if err != nil {
		return err
	}
	if !kip890 {
		add := kmsg.NewPtrAddOffsetsToTxnRequest()
		add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = s.txnID, id, epoch, s.group
		resp, err := add.RequestWith(ctx, s.cl)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if err != nil {
			return fmt.Errorf("add offsets to transaction: %w", err)
		}
	}
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID, req.Group, req.ProducerID, req.ProducerEpoch = s.txnID, s.group, id, epoch
	req.MemberID, req.Generation = member, generation
	req.Topics = offsets(fetches, member)
	resp, err := req.RequestWith(ctx, s.cl)
	if err != nil {
		return fmt.Errorf("commit offsets in transaction: %w", err)
	}
	var errs []error
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				errs = append(errs, fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("commit offsets in transaction: %w", errors.Join(errs...))
	}
	return nil
}

// kip890p2 reports whether the cluster runs transactions as KIP-890 part 2
// has them, which franz-go then does (its own test, kgo's supportsKIP890p2:
// the transaction.version feature at 2 or more): the offsets are then added
// to the transaction by TxnOffsetCommit, and AddOffsetsToTxn is not sent.
func (s *Session) kip890p2(ctx context.Context) (bool, error) {
	s.mu.Lock()
	known := s.kip890
	s.mu.Unlock()
	if known != 0 {
		return known > 0, nil
	}
	req := kmsg.NewPtrApiVersionsRequest()
	req.ClientSoftwareName, req.ClientSoftwareVersion = "decider", "1"
	resp, err := req.RequestWith(ctx, s.cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
	}
	if err != nil {
		return false, fmt.Errorf("api versions: %w", err)
	}
	known = -1
	for _, f := range resp.FinalizedFeatures {
		if f.Name == "transaction.version" && f.MaxVersionLevel >= 2 {
			known = 1
		}
	}
	s.mu.Lock()
	s.kip890 = known
	s.mu.Unlock()
	s.log.Info("transaction protocol", "kip890_part2", known > 0)
	return known > 0, nil
}

// End ends the open transaction: it commits if try is kgo.TryCommit, no
// partition was revoked or lost since the last end and offsetsErr (the
// outcome of CommitOffsets) is nil; else it aborts. It reports whether the
// transaction committed, and whether partitions had been revoked. Call it
// once every record is acknowledged.
func (s *Session) End(ctx context.Context, try kgo.TransactionEndTry, offsetsErr error) (committed, revoked bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	revoked, s.revoked = s.revoked, false
	commit := try == kgo.TryCommit && !revoked && offsetsErr == nil
	// As GroupTransactSession.End: an EndTxn that could not be tried, or
	// that the broker reported abortable or whose outcome is unknown, is
	// retried as an abort (EndTransaction's doc).
	for tries := 1; ; tries++ {
		err = s.cl.EndTransaction(ctx, kgo.TransactionEndTry(commit))
		if err == nil || tries == 10 ||
			!(errors.Is(err, kerr.OperationNotAttempted) || errors.Is(err, kerr.TransactionAbortable) || errors.Is(err, kerr.UnknownServerError)) {
			break
		}
		commit = false
	}
	if err != nil {
		return false, revoked, err
	}
	return commit, revoked, nil
}

// Client returns the session's client, to poll and produce with; its
// transactions begin with its BeginTransaction and end with End.
func (s *Session) Client() *kgo.Client { return s.cl }

// Close leaves the group and closes the client.
func (s *Session) Close() { s.cl.Close() }

// offsets returns the offsets after the records of fetches, as
// TxnOffsetCommit takes them: topic ids from the fetches (a zero id makes
// franz-go send a topic by name), member as each offset's metadata.
func offsets(fetches kgo.Fetches, member string) []kmsg.TxnOffsetCommitRequestTopic {
	var topics []kmsg.TxnOffsetCommitRequestTopic
	at := map[string]int{}
	fetches.EachTopic(func(t kgo.FetchTopic) {
		for _, p := range t.Partitions {
			if len(p.Records) == 0 {
				continue
			}
			i, ok := at[t.Topic]
			if !ok {
				i = len(topics)
				at[t.Topic] = i
				rt := kmsg.NewTxnOffsetCommitRequestTopic()
				rt.Topic, rt.TopicID = t.Topic, t.TopicID
				topics = append(topics, rt)
			}
			last := p.Records[len(p.Records)-1]
			rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
			rp.Partition, rp.Offset, rp.LeaderEpoch, rp.Metadata = p.Partition, last.Offset+1, last.LeaderEpoch, &member
			topics[i].Partitions = append(topics[i].Partitions, rp)
		}
	})
	return topics
}

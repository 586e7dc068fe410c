package processor

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

// txnSession is the worker's group consumer and transactional producer, one
// kgo.Client, whose transactions it ends itself rather than through
// kgo.GroupTransactSession. That session's End sends the consumer offsets,
// then a heartbeat, then EndTxn, each waiting for the one before, after the
// flush. A batch's offsets are known before its records are produced, so
// this session sends them into the transaction beside the flush
// (commitOffsets) and ends it with EndTxn alone (end): at 1k commands/s the
// end after the flush took ≈ 0.35 instead of ≈ 0.7 ms.
//
// What GroupTransactSession promises, it keeps:
//   - A transaction during which partitions were revoked or lost aborts:
//     the callbacks set revoked under mu, and end holds mu from reading it
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
//     to the offsets committed): the worker sets it back itself after an
//     abort (Worker.rewind), and after a commit it is already past them, so
//     the commands polled during an end are not polled again.
type txnSession struct {
	cl    *kgo.Client
	group string
	txnID string
	log   *slog.Logger

	mu      sync.Mutex
	revoked bool // partitions were revoked or lost since the last end
	kip890  int8 // 0 until known; 1 if TxnOffsetCommit adds the offsets to the transaction itself (KIP-890 part 2), -1 if AddOffsetsToTxn must
}

// newTxnSession makes the session's client with opts, and onRevoked as its
// callback for partitions revoked or lost.
func newTxnSession(opts []kgo.Opt, group, txnID string, log *slog.Logger, onRevoked func(context.Context, *kgo.Client, map[string][]int32)) (*txnSession, error) {
	s := &txnSession{group: group, txnID: txnID, log: log}
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

// commitOffsets puts the offsets after b's commands in the open
// transaction, for the group's current generation. An error makes the
// transaction abort, and the protocol be asked again for the next one (a
// cluster whose transaction.version was raised meanwhile).
func (s *txnSession) commitOffsets(ctx context.Context, b *batch) (err error) {
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
	req.Topics = b.offsets(member)
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
func (s *txnSession) kip890p2(ctx context.Context) (bool, error) {
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

// end ends the open transaction: it commits if try is kgo.TryCommit, no
// partition was revoked or lost since the last end and offsetsErr (the
// outcome of commitOffsets) is nil; else it aborts. It reports whether the
// transaction committed, and whether partitions had been revoked. Call it
// once every record is acknowledged.
func (s *txnSession) end(ctx context.Context, try kgo.TransactionEndTry, offsetsErr error) (committed, revoked bool, err error) {
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

// close leaves the group and closes the client.
func (s *txnSession) close() { s.cl.Close() }

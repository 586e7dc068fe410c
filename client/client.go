// Package client is how a Go caller talks to decider: Send a command to an
// aggregate and get its Reply.
//
// Reply routing: a Client reads one partition of each replies topic it
// uses (A.T.replies), chosen at random when it first sends to that
// aggregate type, and names it in every command's
// ce_replypartition. It reads from the end of that partition as of its first
// use, read_committed, and matches replies to waiting calls by command id.
// Many clients can share a replies topic; each reads only its partition.
//
// Retries: a command id is the caller's (CommandID) or a random one; a
// caller that retries after a timeout should send again with the same id,
// which the worker deduplicates within its window. A TimeoutError carries
// the id for that.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"sync"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Config configures a Client. App and Kafka are required.
type Config struct {
	App   string    // the app's name, e.g. "bank"
	Kafka []kgo.Opt // seed brokers, TLS, SASL
	// Schemas encodes commands: every command's Go type must be bound. A
	// client without one sends Raw commands only.
	Schemas *schemas.Registry
	// Source is the ce_source of the commands, naming the caller. Default
	// "decider-client".
	Source string
}

// Raw is a command already encoded in single-object encoding, sent as is:
// Type is its Avro full name (ce_type).
type Raw struct {
	Type    string
	Payload []byte
}

// Client sends commands and awaits their replies. It is safe for concurrent
// use by any number of goroutines. Close it when done.
type Client struct {
	cfg Config
	cl  *kgo.Client
	adm *kadm.Client

	mu         sync.Mutex
	replies    map[string]int32              // replies topic → the partition this client reads
	partitions map[string]int32              // commands topic → its partition count
	waiting    map[string]chan schemas.Reply // command id → its caller

	stop chan struct{}
	done chan struct{}
}

// TimeoutError is returned when ctx ends before the reply arrives. The
// command may or may not have been decided: send it again with the same
// CommandID to find out without applying it twice.
type TimeoutError struct {
	CommandID string
	Err       error
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("no reply to command %s: %v", e.CommandID, e.Err)
}

func (e *TimeoutError) Unwrap() error { return e.Err }

// New connects a client.
func New(cfg Config) (*Client, error) {
	if cfg.App == "" {
		return nil, errors.New("client: Config.App is required")
	}
	if cfg.Schemas == nil {
		cfg.Schemas = schemas.NewRegistry()
	}
	if cfg.Source == "" {
		cfg.Source = "decider-client"
	}
	cl, err := kgo.NewClient(append(cfg.Kafka[:len(cfg.Kafka):len(cfg.Kafka)],
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
	)...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c := &Client{
		cfg: cfg, cl: cl, adm: kadm.NewClient(cl),
		replies: map[string]int32{}, partitions: map[string]int32{}, waiting: map[string]chan schemas.Reply{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go c.readReplies()
	return c, nil
}

// Close stops reading replies and closes the connection. Calls waiting for
// a reply return with an error.
func (c *Client) Close() {
	close(c.stop)
	c.cl.Close()
	<-c.done
}

// Option sets a header of one command.
type Option func(*kgo.Record, *string)

func header(key, value string) Option {
	return func(r *kgo.Record, _ *string) {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
	}
}

// CommandID sets the command id (ce_id). Reuse it when retrying a command
// whose reply did not arrive; the default is a random id.
func CommandID(id string) Option { return func(_ *kgo.Record, cid *string) { *cid = id } }

// ExpectedVersion makes the command decided only if the aggregate is at
// version v; otherwise the reply is CONFLICT with the current version.
func ExpectedVersion(v int64) Option {
	return header(schemas.HeaderExpectedVersion, strconv.FormatInt(v, 10))
}

// Deadline makes a command read after t EXPIRED instead of decided.
func Deadline(t time.Time) Option {
	return header(schemas.HeaderDeadline, t.UTC().Format(time.RFC3339Nano))
}

// CorrelationID sets ce_correlationid, copied onto the events and the reply.
func CorrelationID(id string) Option { return header(schemas.HeaderCorrelationID, id) }

// Send sends command (a value of a bound Go type, or a Raw) to aggregate id
// of aggregateType and waits for its reply until ctx ends. A reply of any
// status is returned with a nil error; the error is for what kept the reply
// from arriving (a *TimeoutError when ctx ended first).
func (c *Client) Send(ctx context.Context, aggregateType, id string, command any, opts ...Option) (schemas.Reply, error) {
	var (
		typ     string
		payload []byte
		err     error
	)
	if raw, ok := command.(Raw); ok {
		typ, payload = raw.Type, raw.Payload
	} else if typ, payload, err = c.cfg.Schemas.Encode(command); err != nil {
		return schemas.Reply{}, fmt.Errorf("send to %s %s: %w", aggregateType, id, err)
	}
	topics := topology.TopicsOf(c.cfg.App, aggregateType)
	replyPartition, err := c.replyPartition(ctx, topics.Replies)
	if err != nil {
		return schemas.Reply{}, fmt.Errorf("send to %s %s: %w", aggregateType, id, err)
	}
	cmdID := randomID()
	r := &kgo.Record{Topic: topics.Commands, Key: []byte(id), Value: payload}
	for _, o := range opts {
		o(r, &cmdID)
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: schemas.HeaderSpecVersion, Value: []byte(schemas.SpecVersion)},
		kgo.RecordHeader{Key: schemas.HeaderID, Value: []byte(cmdID)},
		kgo.RecordHeader{Key: schemas.HeaderType, Value: []byte(typ)},
		kgo.RecordHeader{Key: schemas.HeaderSource, Value: []byte(c.cfg.Source)},
		kgo.RecordHeader{Key: schemas.HeaderSubject, Value: []byte(id)},
		kgo.RecordHeader{Key: schemas.HeaderTime, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: schemas.HeaderContentType, Value: []byte(schemas.ContentType)},
		kgo.RecordHeader{Key: schemas.HeaderReplyTo, Value: []byte(topics.Replies)},
		kgo.RecordHeader{Key: schemas.HeaderReplyPartition, Value: []byte(strconv.Itoa(int(replyPartition)))},
	)
	n, err := c.commandPartitions(ctx, topics.Commands)
	if err != nil {
		return schemas.Reply{}, fmt.Errorf("send to %s %s: %w", aggregateType, id, err)
	}
	r.Partition = topology.Partition(r.Key, n)

	ch := make(chan schemas.Reply, 1)
	c.mu.Lock()
	c.waiting[cmdID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, cmdID)
		c.mu.Unlock()
	}()
	if err := c.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		if ctx.Err() != nil {
			return schemas.Reply{}, &TimeoutError{CommandID: cmdID, Err: err}
		}
		return schemas.Reply{}, fmt.Errorf("send command %s to %s/%d: %w", cmdID, r.Topic, r.Partition, err)
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-ctx.Done():
		return schemas.Reply{}, &TimeoutError{CommandID: cmdID, Err: ctx.Err()}
	case <-c.stop:
		return schemas.Reply{}, fmt.Errorf("command %s: client closed", cmdID)
	}
}

// partitionsOf returns a topic's partition count.
func (c *Client) partitionsOf(ctx context.Context, topic string) (int32, error) {
	details, err := c.adm.ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	d, ok := details[topic]
	if !ok || d.Err != nil {
		return 0, fmt.Errorf("topic %s does not exist", topic)
	}
	return int32(len(d.Partitions)), nil
}

// commandPartitions returns the partition count of a commands topic, which
// never changes.
func (c *Client) commandPartitions(ctx context.Context, topic string) (int32, error) {
	c.mu.Lock()
	n, ok := c.partitions[topic]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	n, err := c.partitionsOf(ctx, topic)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.partitions[topic] = n
	c.mu.Unlock()
	return n, nil
}

// replyPartition returns the partition of topic this client reads, starting
// to read it (from its current end) on first use.
func (c *Client) replyPartition(ctx context.Context, topic string) (int32, error) {
	c.mu.Lock()
	if p, ok := c.replies[topic]; ok {
		c.mu.Unlock()
		return p, nil
	}
	c.mu.Unlock()
	n, err := c.partitionsOf(ctx, topic)
	if err != nil {
		return 0, err
	}
	i, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	p := int32(i.Int64())
	ends, err := c.adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	end, _ := ends.Lookup(topic, p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.replies[topic]; ok { // another goroutine won
		return prev, nil
	}
	c.replies[topic] = p
	c.cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(end.Offset)}})
	return p, nil
}

// readReplies hands every reply read to the call waiting for it.
func (c *Client) readReplies() {
	defer close(c.done)
	for {
		fetches := c.cl.PollFetches(context.Background())
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachRecord(func(r *kgo.Record) {
			c.mu.Lock()
			ch, ok := c.waiting[string(r.Key)]
			c.mu.Unlock()
			if !ok {
				return
			}
			v, err := c.cfg.Schemas.Decode(schemas.ReplyName, r.Value)
			if err != nil {
				return
			}
			select {
			case ch <- v.(schemas.Reply):
			default:
			}
		})
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

package topology

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// PartitionMismatchError says that an existing topic does not have the
// partition count its aggregate type declares. decider refuses to run on it:
// commands, events and snapshots of one aggregate must share a partition.
type PartitionMismatchError struct {
	Topic string
	Want  int32 // the aggregate type's partition count
	Got   int32 // the topic's
}

func (e *PartitionMismatchError) Error() string {
	return fmt.Sprintf("topic %s has %d partitions, its aggregate type declares %d: partition counts never change after creation; recreate the topic or declare %d", e.Topic, e.Got, e.Want, e.Got)
}

// ErrNotCompacted: a snapshots topic exists without cleanup.policy=compact,
// so the changelog would grow without bound or lose snapshots to retention.
var ErrNotCompacted = errors.New("snapshots topic is not compacted")

// ErrMissingTopic: VerifyTopics found a topic that does not exist.
var ErrMissingTopic = errors.New("topic does not exist")

// TopicOptions says how EnsureTopics creates missing topics.
type TopicOptions struct {
	// ReplicationFactor of created topics; 0 or -1 means the broker's
	// default.
	ReplicationFactor int16
}

// EnsureTopics creates the missing topics of every aggregate type of app
// (snapshots with cleanup.policy=compact, events with unlimited retention)
// and verifies the existing ones as
// VerifyTopics does.
func EnsureTopics(ctx context.Context, adm *kadm.Client, app *App, o TopicOptions) error {
	return checkTopics(ctx, adm, app, &o)
}

// VerifyTopics checks that the topics of every aggregate type exist
// (ErrMissingTopic otherwise), that commands, events and snapshots have the
// declared partition count (*PartitionMismatchError otherwise), and that
// snapshots is compacted and not also deleted by retention (ErrNotCompacted
// otherwise). It creates nothing.
func VerifyTopics(ctx context.Context, adm *kadm.Client, app *App) error {
	return checkTopics(ctx, adm, app, nil)
}

// checkTopics verifies the topics that exist and, when create is set,
// creates the others; without it, a missing topic is an error.
func checkTopics(ctx context.Context, adm *kadm.Client, app *App, create *TopicOptions) error {
	var errs []error
	for _, agg := range app.aggregates {
		t := app.Topics(agg)
		details, err := adm.ListTopics(ctx, t.all()...)
		if err != nil {
			return fmt.Errorf("list topics of %s: %w", agg.name, err)
		}
		for _, name := range t.all() {
			d, ok := details[name]
			switch {
			case (!ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition)) && create != nil:
				errs = append(errs, createTopic(ctx, adm, name, agg.partitions, topicConfigs(t, name), create))
				continue
			case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
				errs = append(errs, fmt.Errorf("%w: %s", ErrMissingTopic, name))
				continue
			case d.Err != nil:
				errs = append(errs, fmt.Errorf("topic %s: %w", name, d.Err))
				continue
			}
			if got := int32(len(d.Partitions)); got != agg.partitions && name != t.Replies && name != t.DLQ {
				errs = append(errs, &PartitionMismatchError{Topic: name, Want: agg.partitions, Got: got})
			}
			if name == t.Snapshots {
				errs = append(errs, verifyCompacted(ctx, adm, name))
			}
		}
	}
	return errors.Join(errs...)
}

// topicConfigs returns the configs topic name of t is created with: the
// snapshots topic is compacted, and the events topic, the source of truth,
// is kept forever (a broker's default retention would delete events that
// read models and `decider rebuild snapshots` need).
func topicConfigs(t Topics, name string) map[string]*string {
	v := func(s string) *string { return &s }
	switch name {
	case t.Snapshots:
		return map[string]*string{"cleanup.policy": v("compact")}
	case t.Events:
		return map[string]*string{"retention.ms": v("-1"), "retention.bytes": v("-1")}
	}
	return nil
}

func createTopic(ctx context.Context, adm *kadm.Client, name string, partitions int32, configs map[string]*string, o *TopicOptions) error {
	rf := o.ReplicationFactor
	if rf == 0 {
		rf = -1
	}
	resp, err := adm.CreateTopic(ctx, partitions, rf, configs, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	return nil
}

func verifyCompacted(ctx context.Context, adm *kadm.Client, topic string) error {
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return fmt.Errorf("describe configs of %s: %w", topic, err)
	}
	rc, err := rcs.On(topic, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		return fmt.Errorf("describe configs of %s: %w", topic, err)
	}
	for _, c := range rc.Configs {
		// compact,delete would let retention delete snapshots a full
		// restore needs.
		if c.Key == "cleanup.policy" && c.Value != nil && strings.Contains(*c.Value, "compact") && !strings.Contains(*c.Value, "delete") {
			return nil
		}
	}
	return fmt.Errorf("%w: %s needs cleanup.policy=compact", ErrNotCompacted, topic)
}

func (t Topics) all() []string {
	return []string{t.Commands, t.Events, t.Snapshots, t.Replies, t.DLQ}
}

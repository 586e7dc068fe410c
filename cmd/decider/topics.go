package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

const topicsUsage = `Creates, describes or verifies the five topics of an app's aggregate type
A.T: A.T.commands, A.T.events, A.T.snapshots (cleanup.policy=compact),
A.T.replies and A.T.dlq.

  create    creates the missing topics (--partitions, default 16, for
            commands, events and snapshots alike, and replies and dlq), and
            verifies the existing ones as verify does; then describes them
  describe  prints each topic's partition count, replication factor,
            cleanup.policy, and per partition its leader, replicas and
            start and end offsets
  verify    checks that every topic exists, that commands, events and
            snapshots have the same partition count (--partitions, or by
            default the commands topic's), and that snapshots is compacted.
            Exits 4 with what is wrong when a check fails.

A partition count never changes after creation: commands, events and
snapshots of one aggregate share a partition number, and a worker refuses
to run on topics that do not fit.

Examples:
  decider topics create --brokers k1:9092 --partitions 32 --replication-factor 3
  decider topics describe --app bank
  decider topics verify --brokers k1:9092 --tls --sasl-mechanism SCRAM-SHA-512 --sasl-user ops
`

func runTopics(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("topics")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	partitions := fs.Int("partitions", 0, "partition count: of the topics create makes (0: 16); the one verify expects (0: the commands topic's)")
	replication := fs.Int("replication-factor", 0, "replication factor of the topics create makes (0: the broker's default)")
	action, err := parseAction(fs, args, "create", "describe", "verify")
	if err != nil {
		return err
	}
	c, err := dial(ctx, kafkaOpts)
	if err != nil {
		return err
	}
	defer c.cl.Close()
	cl, adm := c.cl, c.adm
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch action {
	case "create":
		app, err := exampleApp(*appName, int32(*partitions))
		if err != nil {
			return err
		}
		if err := topology.EnsureTopics(ctx, adm, app, topology.TopicOptions{ReplicationFactor: int16(*replication)}); err != nil {
			return topicsFailed(err)
		}
		t := app.Topics(app.Aggregates()[0])
		cl.PurgeTopicsFromClient(t.Commands, t.Events, t.Snapshots, t.Replies, t.DLQ) // kadm caches the metadata that found them missing
	case "verify":
		app, err := exampleApp(*appName, int32(*partitions))
		if *partitions == 0 {
			app, err = discoverApp(ctx, adm, *appName)
		}
		if err != nil {
			return topicsFailed(err)
		}
		if err := topology.VerifyTopics(ctx, adm, app); err != nil {
			return topicsFailed(err)
		}
		agg := app.Aggregates()[0]
		fmt.Fprintf(stdout, "ok: the topics of %s/%s exist, with %d partitions, and %s is compacted\n",
			app.Name(), agg.Name(), agg.Partitions(), app.Topics(agg).Snapshots)
		return nil
	}
	return describeTopics(ctx, adm, topology.TopicsOf(*appName, accounts.Name), stdout)
}

// topicsFailed makes a failed check of the topics exit 4.
func topicsFailed(err error) error {
	var mismatch *topology.PartitionMismatchError
	if errors.As(err, &mismatch) || errors.Is(err, topology.ErrMissingTopic) || errors.Is(err, topology.ErrNotCompacted) {
		return &exitCodeError{code: 4, err: err}
	}
	return err
}

// describeTopics prints the topics t names as they are on the cluster.
func describeTopics(ctx context.Context, adm *kadm.Client, t topology.Topics, w io.Writer) error {
	names := []string{t.Commands, t.Events, t.Snapshots, t.Replies, t.DLQ}
	details, err := adm.ListTopics(ctx, names...)
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	var existing []string
	for _, n := range names {
		if d, ok := details[n]; ok && d.Err == nil {
			existing = append(existing, n)
		}
	}
	configs, starts, ends := kadm.ResourceConfigs(nil), kadm.ListedOffsets(nil), kadm.ListedOffsets(nil)
	if len(existing) > 0 {
		if configs, err = adm.DescribeTopicConfigs(ctx, existing...); err != nil {
			return fmt.Errorf("describe topic configs: %w", err)
		}
		if starts, err = adm.ListStartOffsets(ctx, existing...); err == nil {
			err = starts.Error()
		}
		if err != nil {
			return fmt.Errorf("list start offsets: %w", err)
		}
		if ends, err = adm.ListEndOffsets(ctx, existing...); err == nil {
			err = ends.Error()
		}
		if err != nil {
			return fmt.Errorf("list end offsets: %w", err)
		}
	}
	for _, n := range names {
		d, ok := details[n]
		switch {
		case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
			fmt.Fprintf(w, "%s: missing\n", n)
			continue
		case d.Err != nil:
			fmt.Fprintf(w, "%s: %v\n", n, d.Err)
			continue
		}
		policy := "?"
		if rc, err := configs.On(n, nil); err == nil && rc.Err == nil {
			for _, c := range rc.Configs {
				if c.Key == "cleanup.policy" && c.Value != nil {
					policy = *c.Value
				}
			}
		}
		ps := d.Partitions.Sorted()
		rf := 0
		if len(ps) > 0 {
			rf = len(ps[0].Replicas)
		}
		fmt.Fprintf(w, "%s: %d partitions, replication factor %d, cleanup.policy %s\n", n, len(ps), rf, policy)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  partition\tleader\treplicas\tisr\tstart\tend\t\n")
		for _, p := range ps {
			s, _ := starts.Lookup(n, p.Partition)
			e, _ := ends.Lookup(n, p.Partition)
			fmt.Fprintf(tw, "  %d\t%d\t%v\t%v\t%d\t%d\t\n", p.Partition, p.Leader, slices.Sorted(slices.Values(p.Replicas)), slices.Sorted(slices.Values(p.ISR)), s.Offset, e.Offset)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

package topology_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func admin(t *testing.T, c *kfake.Cluster) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

func TestEnsureTopicsCreatesAndVerifies(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	app, err := accounts.App(3)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := topology.VerifyTopics(ctx, admin(t, c), app); !errors.Is(err, topology.ErrMissingTopic) {
		t.Fatalf("verify before creation: %v, want ErrMissingTopic", err)
	}
	if err := topology.EnsureTopics(ctx, admin(t, c), app, topology.TopicOptions{}); err != nil {
		t.Fatal(err)
	}
	adm := admin(t, c) // a client whose metadata postdates the topics
	if err := topology.VerifyTopics(ctx, adm, app); err != nil {
		t.Fatalf("verify after creation: %v", err)
	}
	if err := topology.EnsureTopics(ctx, adm, app, topology.TopicOptions{}); err != nil {
		t.Fatalf("ensure is idempotent: %v", err)
	}
	details, _ := adm.ListTopics(ctx, "bank.account.events", "bank.account.dlq")
	for name, d := range details {
		if len(d.Partitions) != 3 {
			t.Errorf("%s has %d partitions, want 3", name, len(d.Partitions))
		}
	}
	// Events, the source of truth, are kept forever.
	rc, err := adm.DescribeTopicConfigs(ctx, "bank.account.events")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rc.On("bank.account.events", nil)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, c := range cfg.Configs {
		if (c.Key == "retention.ms" || c.Key == "retention.bytes") && c.Value != nil && *c.Value == "-1" {
			kept++
		}
	}
	if kept != 2 {
		t.Errorf("events topic configs %v: want retention.ms and retention.bytes -1", cfg.Configs)
	}
	// A snapshots topic that retention may also delete from is refused.
	compactDelete := "compact,delete"
	if _, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "cleanup.policy", Value: &compactDelete}}, "bank.account.snapshots"); err != nil {
		t.Fatal(err)
	}
	if err := topology.VerifyTopics(ctx, adm, app); !errors.Is(err, topology.ErrNotCompacted) {
		t.Errorf("verify with cleanup.policy=compact,delete: %v, want ErrNotCompacted", err)
	}
}

// A worker refuses topics whose partition count differs from the app's,
// naming the topic and both counts; and a snapshots topic that is not
// compacted.
func TestPartitionMismatchAndCompaction(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(5, "bank.account.events", "bank.account.snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	app, _ := accounts.App(4)
	err = topology.EnsureTopics(context.Background(), admin(t, c), app, topology.TopicOptions{})
	var pm *topology.PartitionMismatchError
	if !errors.As(err, &pm) {
		t.Fatalf("got %v, want a PartitionMismatchError", err)
	}
	if pm.Topic != "bank.account.events" || pm.Want != 4 || pm.Got != 5 {
		t.Fatalf("mismatch %+v", pm)
	}
	for _, s := range []string{"bank.account.events has 5 partitions", "declares 4"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if !errors.Is(err, topology.ErrNotCompacted) {
		t.Errorf("error %q does not report the uncompacted snapshots topic", err)
	}
}

package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// topics create makes the five topics (snapshots compacted), describe shows
// them with their end offsets, verify passes; on topics that do not fit
// (a partition count, a snapshots topic that is not compacted, a missing
// topic) verify exits 4 and says what is wrong.
func TestTopics(t *testing.T) {
	addr := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := decider(ctx, "topics", "create", "--brokers", addr, "--app", "shop", "--partitions", "3"); err != nil {
		t.Fatalf("topics create: %v\n%s", err, out)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DefaultProduceTopic("shop.account.events"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Partition: 2, Value: []byte("x")}, &kgo.Record{Partition: 2, Value: []byte("y")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	out, err := decider(ctx, "topics", "describe", "--brokers", addr, "--app", "shop")
	if err != nil {
		t.Fatalf("topics describe: %v\n%s", err, out)
	}
	for _, want := range []string{
		"shop.account.commands: 3 partitions, replication factor 1, cleanup.policy delete\n",
		"shop.account.snapshots: 3 partitions, replication factor 1, cleanup.policy compact\n",
		"shop.account.dlq: 3 partitions",
		"shop.account.events: 3 partitions",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe lacks %q:\n%s", want, out)
		}
	}
	events := out[strings.Index(out, "shop.account.events:"):strings.Index(out, "shop.account.snapshots:")]
	if lines := strings.Split(strings.TrimSpace(events), "\n"); len(lines) != 5 || strings.Join(strings.Fields(lines[4]), " ") != "2 0 [0] [0] 0 2" {
		t.Errorf("events, partition 2 should end at offset 2:\n%s", events)
	}
	if out, err := decider(ctx, "topics", "verify", "--brokers", addr, "--app", "shop"); err != nil || !strings.HasPrefix(out, "ok: the topics of shop/account exist, with 3 partitions") {
		t.Fatalf("topics verify: %v\n%s", err, out)
	}

	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 3, -1, nil, "odd.account.commands"); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateTopic(ctx, 2, -1, nil, "odd.account.events"); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateTopic(ctx, 3, -1, nil, "odd.account.snapshots"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--app", "odd"}, []string{
			"topic odd.account.events has 2 partitions, its aggregate type declares 3",
			"snapshots topic is not compacted: odd.account.snapshots needs cleanup.policy=compact",
			"topic does not exist: odd.account.replies",
			"topic does not exist: odd.account.dlq",
		}},
		{[]string{"--app", "shop", "--partitions", "4"}, []string{"topic shop.account.commands has 3 partitions, its aggregate type declares 4"}},
		{[]string{"--app", "nothing"}, []string{"topic does not exist: nothing.account.commands (is --app right?)"}},
	} {
		_, err := decider(ctx, append([]string{"topics", "verify", "--brokers", addr}, tc.args...)...)
		if exitCode(err) != 4 {
			t.Errorf("topics verify %v: %v (exit %d), want exit 4", tc.args, err, exitCode(err))
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("topics verify %v: %v\nwant it to say %q", tc.args, err, w)
			}
		}
	}
	if _, err := decider(ctx, "topics", "--brokers", addr); err == nil || !strings.Contains(err.Error(), "one of create, describe, verify") {
		t.Errorf("topics without an action: %v", err)
	}
}

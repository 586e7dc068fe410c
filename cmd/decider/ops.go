package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// What the operator commands (topics, tail, inspect, rebuild, reset) share.
// This binary knows one domain, the example's aggregate type account; the
// app name (--app) and the partition count vary.

// exampleApp returns app name with the example's aggregate type, with n
// partitions.
func exampleApp(name string, n int32) (*topology.App, error) {
	agg, err := accounts.Aggregate(n)
	if err != nil {
		return nil, err
	}
	return topology.NewApp(name, agg)
}

// evolve applies event to state with the domain's Evolve; a panic in it is
// an error.
func evolve(agg *topology.Aggregate, state, event any) (next any, err error) {
	defer func() {
		if p := recover(); p != nil {
			next, err = nil, fmt.Errorf("evolve panicked: %v", p)
		}
	}()
	return agg.Evolve(state, event), nil
}

// discoverApp returns app name with the example's aggregate type, with the
// partition count its commands topic has.
func discoverApp(ctx context.Context, adm *kadm.Client, name string) (*topology.App, error) {
	topic := topology.TopicsOf(name, accounts.Name).Commands
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list topic %s: %w", topic, err)
	}
	d, ok := details[topic]
	if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("%w: %s (is --app right?)", topology.ErrMissingTopic, topic)
	}
	if d.Err != nil {
		return nil, fmt.Errorf("topic %s: %w", topic, d.Err)
	}
	return exampleApp(name, int32(len(d.Partitions)))
}

// appAggregate returns the aggregate type named name of app, naming the
// ones it has when it has none of that name.
func appAggregate(app *topology.App, name string) (*topology.Aggregate, error) {
	if agg, ok := app.Aggregate(name); ok {
		return agg, nil
	}
	var names []string
	for _, a := range app.Aggregates() {
		names = append(names, a.Name())
	}
	return nil, fmt.Errorf("--aggregate %q: app %s has %s", name, app.Name(), strings.Join(names, ", "))
}

// errActiveMembers is wrapped by the error of a command that refuses to
// change what the workers of a live consumer group own.
var errActiveMembers = errors.New("the consumer group has active members")

// checkNoMembers fails, wrapping errActiveMembers, while group has members.
func checkNoMembers(ctx context.Context, adm *kadm.Client, group string) error {
	n, hosts, err := groupMembers(ctx, adm, group)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%w: group %s has %d (%s); stop every worker of the app first", errActiveMembers, group, n, strings.Join(hosts, ", "))
	}
	return nil
}

// groupMembers returns the number of active members of group and their
// client ids and hosts.
func groupMembers(ctx context.Context, adm *kadm.Client, group string) (int, []string, error) {
	groups, err := adm.DescribeGroups(ctx, group)
	if err != nil {
		return 0, nil, fmt.Errorf("describe group %s: %w", group, err)
	}
	g, ok := groups[group]
	if !ok || errors.Is(g.Err, kerr.GroupIDNotFound) {
		return 0, nil, nil
	}
	if g.Err != nil {
		return 0, nil, fmt.Errorf("describe group %s: %w", group, g.Err)
	}
	var hosts []string
	for _, m := range g.Members {
		hosts = append(hosts, m.ClientID+"@"+m.ClientHost)
	}
	return len(g.Members), hosts, nil
}

// dialAggregate connects (see dial) and finds aggregate type aggregate of
// app appName there; the caller closes c.cl.
func dialAggregate(ctx context.Context, kafkaOpts func() ([]kgo.Opt, error), appName, aggregate string) (*conn, *topology.App, *topology.Aggregate, error) {
	c, err := dial(ctx, kafkaOpts)
	if err != nil {
		return nil, nil, nil, err
	}
	app, err := discoverApp(ctx, c.adm, appName)
	if err == nil {
		var agg *topology.Aggregate
		if agg, err = appAggregate(app, aggregate); err == nil {
			return c, app, agg, nil
		}
	}
	c.cl.Close()
	return nil, nil, nil, err
}

package topology_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
)

// A counter domain: one command, one event, an int state.
type (
	Count   struct{ Value int64 }
	Add     struct{ N int64 }
	Added   struct{ N int64 }
	Command interface{}
	Event   interface{}
)

const counterSchemas = `
{"type":"record","name":"Count","namespace":"demo","fields":[{"name":"Value","type":"long"}]}
{"type":"record","name":"Add","namespace":"demo","fields":[{"name":"N","type":"long"}]}
{"type":"record","name":"Added","namespace":"demo","fields":[{"name":"N","type":"long"}]}`

func counterRegistry() *schemas.Registry {
	reg := schemas.NewRegistry()
	for _, s := range strings.Split(strings.TrimSpace(counterSchemas), "\n") {
		if err := reg.Add(s); err != nil {
			panic(err)
		}
	}
	_ = schemas.Bind[Count](reg, "demo.Count")
	_ = schemas.Bind[Add](reg, "demo.Add")
	_ = schemas.Bind[Added](reg, "demo.Added")
	return reg
}

var errTooMuch = topology.Rejection("too_much")

func counterSpec(reg *schemas.Registry) topology.Spec[Count, Command, Event] {
	return topology.Spec[Count, Command, Event]{
		Name: "counter", Partitions: 4, Schemas: reg,
		State: "demo.Count", Commands: []string{"demo.Add"}, Events: []string{"demo.Added"},
		Decider: topology.Decider[Count, Command, Event]{
			Decide: func(s Count, c Command) ([]Event, error) {
				if add := c.(Add); s.Value+add.N <= 10 {
					return []Event{Added(add)}, nil
				}
				return nil, errTooMuch
			},
			Evolve: func(s Count, e Event) Count { return Count{s.Value + e.(Added).N} },
		},
	}
}

// Declare an aggregate type and run its logic through the type-erased form
// the worker uses.
func ExampleNewAggregate() {
	counter, err := topology.NewAggregate(counterSpec(counterRegistry()))
	if err != nil {
		panic(err)
	}
	app, _ := topology.NewApp("demo", counter)
	fmt.Println(app.Topics(counter).Commands, counter.Partitions())

	state := counter.Initial()
	for _, n := range []int64{4, 5, 3} {
		events, err := counter.Decide(state, Add{N: n})
		if errors.Is(err, errTooMuch) {
			fmt.Println("add", n, "rejected:", err)
			continue
		}
		state = counter.Evolve(state, events...)
		fmt.Println("add", n, "->", state)
	}
	// Output:
	// demo.counter.commands 4
	// add 4 -> {4}
	// add 5 -> {9}
	// add 3 rejected: too_much
}

func TestNewAggregateRefusesWhatDoesNotFit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*topology.Spec[Count, Command, Event])
		want   string
	}{
		{"bad name", func(s *topology.Spec[Count, Command, Event]) { s.Name = "Counter!" }, "aggregate name"},
		{"unknown command", func(s *topology.Spec[Count, Command, Event]) { s.Commands = []string{"demo.Nope"} }, `command "demo.Nope" has no schema bound`},
		{"state of another type", func(s *topology.Spec[Count, Command, Event]) { s.State = "demo.Add" }, "want topology_test.Count"},
		{"no events", func(s *topology.Spec[Count, Command, Event]) { s.Events = nil }, "at least one command and one event"},
		{"no decide", func(s *topology.Spec[Count, Command, Event]) { s.Decider.Decide = nil }, "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := counterSpec(counterRegistry())
			tc.change(&s)
			if _, err := topology.NewAggregate(s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	counter, _ := topology.NewAggregate(counterSpec(counterRegistry()))
	if _, err := topology.NewApp("demo", counter, counter); err == nil || !strings.Contains(err.Error(), "declared twice") {
		t.Fatalf("duplicate aggregate type: %v", err)
	}
}

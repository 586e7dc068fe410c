package topology

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"

	"github.com/deciderhq/decider/schemas"
)

// Rejection is a domain's refusal of a command, a reason code such as
// "insufficient_funds". Decide returns it as its error; the command's reply is
// REJECTED with this reason. Any other error from Decide is unexpected and
// makes the reply FAILED. Declare rejections as package-level values and
// compare them with errors.Is.
type Rejection string

// Error returns the reason code.
func (r Rejection) Error() string { return string(r) }

// Decider is a domain's logic for one aggregate type, as pure functions over
// its state S, its commands C and its events E (usually interfaces that the
// domain's command and event structs implement).
//
// Both functions must be deterministic: no clocks, no I/O, no randomness.
// decider may call them again for the same input after a failed transaction.
type Decider[S, C, E any] struct {
	// Initial is the state of an aggregate that has no events.
	Initial S
	// Decide validates command against state and returns the events it
	// causes. A Rejection error refuses it; an empty slice with a nil error
	// accepts it without change.
	Decide func(state S, command C) ([]E, error)
	// Evolve applies one event to state and returns the new state. It must
	// not modify state in place if S holds references (maps, slices).
	Evolve func(state S, event E) S
}

// Spec declares one aggregate type: its name, partition count, schemas and
// logic. The Avro full names must be bound to Go types in Schemas (see
// schemas.Bind): State to S, every Command to a type that implements C, and
// every Event to a type that implements E.
type Spec[S, C, E any] struct {
	Name       string // lower-case, e.g. "account"; part of every topic name
	Partitions int32  // partitions of its commands, events and snapshots topics; default 16
	Schemas    *schemas.Registry
	State      string   // Avro full name of the state record
	Commands   []string // Avro full names of the command records
	Events     []string // Avro full names of the event records
	Decider    Decider[S, C, E]
}

// DefaultPartitions is the partition count of an aggregate type whose Spec
// leaves Partitions zero.
const DefaultPartitions = 16

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// Aggregate is a validated aggregate type with its types erased, the form the
// processor runs. Create one with NewAggregate.
type Aggregate struct {
	name       string
	partitions int32
	reg        *schemas.Registry
	state      string
	commands   map[string]bool
	events     map[string]bool
	initial    any
	decide     func(state, command any) ([]any, error)
	evolve     func(state, event any) any
}

// NewAggregate checks spec and returns its aggregate type. It fails, naming
// what is wrong, when a name is malformed, a schema is missing or unbound,
// or a bound Go type does not fit S, C or E.
func NewAggregate[S, C, E any](spec Spec[S, C, E]) (*Aggregate, error) {
	if !namePattern.MatchString(spec.Name) {
		return nil, fmt.Errorf("aggregate name %q: want lower-case letters, digits, '-' or '_', starting with a letter", spec.Name)
	}
	if spec.Partitions == 0 {
		spec.Partitions = DefaultPartitions
	}
	if spec.Partitions < 0 {
		return nil, fmt.Errorf("aggregate %s: partitions %d < 1", spec.Name, spec.Partitions)
	}
	if spec.Schemas == nil || spec.Decider.Decide == nil || spec.Decider.Evolve == nil {
		return nil, fmt.Errorf("aggregate %s: Schemas, Decider.Decide and Decider.Evolve are required", spec.Name)
	}
	a := &Aggregate{
		name:       spec.Name,
		partitions: spec.Partitions,
		reg:        spec.Schemas,
		state:      spec.State,
		commands:   map[string]bool{},
		events:     map[string]bool{},
		initial:    spec.Decider.Initial,
	}
	var errs []error
	check := func(kind, name string, want reflect.Type, exact bool) {
		t, ok := spec.Schemas.Bound(name)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s %q has no schema bound to a Go type", kind, name))
		case exact && t != want:
			errs = append(errs, fmt.Errorf("%s %q is bound to %s, want %s", kind, name, t, want))
		case !exact && !t.AssignableTo(want):
			errs = append(errs, fmt.Errorf("%s %q is bound to %s, which does not implement %s", kind, name, t, want))
		}
	}
	check("state", spec.State, reflect.TypeFor[S](), true)
	for _, n := range spec.Commands {
		check("command", n, reflect.TypeFor[C](), false)
		a.commands[n] = true
	}
	for _, n := range spec.Events {
		check("event", n, reflect.TypeFor[E](), false)
		a.events[n] = true
	}
	if len(spec.Commands) == 0 || len(spec.Events) == 0 {
		errs = append(errs, errors.New("at least one command and one event are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("aggregate %s: %w", spec.Name, err)
	}
	d := spec.Decider
	a.decide = func(state, command any) ([]any, error) {
		events, err := d.Decide(state.(S), command.(C))
		if err != nil {
			return nil, err
		}
		out := make([]any, len(events))
		for i, e := range events {
			out[i] = e
		}
		return out, nil
	}
	a.evolve = func(state, event any) any { return d.Evolve(state.(S), event.(E)) }
	return a, nil
}

// Name returns the aggregate type's name.
func (a *Aggregate) Name() string { return a.name }

// Partitions returns the partition count of its co-partitioned topics.
func (a *Aggregate) Partitions() int32 { return a.partitions }

// Schemas returns the registry its records are encoded with.
func (a *Aggregate) Schemas() *schemas.Registry { return a.reg }

// Commands returns the Avro full names of its commands, sorted.
func (a *Aggregate) Commands() []string { return slices.Sorted(maps.Keys(a.commands)) }

// CommandName resolves a command type given by its Avro full name or its
// short name (the last dot-separated part) to the full name.
func (a *Aggregate) CommandName(typ string) (string, bool) {
	for _, n := range a.Commands() {
		if n == typ || schemas.ShortName(n) == typ {
			return n, true
		}
	}
	return "", false
}

// StateName returns the Avro full name of the state record.
func (a *Aggregate) StateName() string { return a.state }

// Initial returns the state of an aggregate with no events.
func (a *Aggregate) Initial() any { return a.initial }

// Decide runs the domain's Decide. It does not recover panics; the caller
// does, since only it knows what to answer.
func (a *Aggregate) Decide(state, command any) ([]any, error) { return a.decide(state, command) }

// Evolve folds events into state with the domain's Evolve.
func (a *Aggregate) Evolve(state any, events ...any) any {
	for _, e := range events {
		state = a.evolve(state, e)
	}
	return state
}

// DecodeCommand reads a command payload whose ce_type is name. Errors wrap
// schemas.ErrUnknownType when name is not one of this aggregate's commands,
// or the decoding errors of schemas.Registry.Decode.
func (a *Aggregate) DecodeCommand(name string, payload []byte) (any, error) {
	if !a.commands[name] {
		return nil, fmt.Errorf("%w: %q is not a command of %s", schemas.ErrUnknownType, name, a.name)
	}
	return a.reg.Decode(name, payload)
}

// DecodeEvent reads an event payload whose ce_type is name.
func (a *Aggregate) DecodeEvent(name string, payload []byte) (any, error) {
	if !a.events[name] {
		return nil, fmt.Errorf("%w: %q is not an event of %s", schemas.ErrUnknownType, name, a.name)
	}
	return a.reg.Decode(name, payload)
}

// EncodeState writes a state value in single-object encoding.
func (a *Aggregate) EncodeState(state any) ([]byte, error) {
	_, b, err := a.reg.Encode(state)
	return b, err
}

// DecodeState reads a state written by EncodeState (or by an older schema
// version of the state record).
func (a *Aggregate) DecodeState(data []byte) (any, error) {
	return a.reg.Decode(a.state, data)
}

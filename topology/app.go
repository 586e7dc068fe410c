package topology

import (
	"fmt"
	"slices"
)

// App is a named set of aggregate types run by one consumer group.
type App struct {
	name       string
	aggregates []*Aggregate
	byName     map[string]*Aggregate
	byCommands map[string]*Aggregate
}

// NewApp validates an app: its name, and aggregate type names that are
// unique within it.
func NewApp(name string, aggregates ...*Aggregate) (*App, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("app name %q: want lower-case letters, digits, '-' or '_', starting with a letter", name)
	}
	if len(aggregates) == 0 {
		return nil, fmt.Errorf("app %s: no aggregate types", name)
	}
	a := &App{name: name, byName: map[string]*Aggregate{}, byCommands: map[string]*Aggregate{}}
	for _, agg := range aggregates {
		if _, dup := a.byName[agg.name]; dup {
			return nil, fmt.Errorf("app %s: aggregate type %q declared twice", name, agg.name)
		}
		a.byName[agg.name] = agg
		a.byCommands[a.Topics(agg).Commands] = agg
		a.aggregates = append(a.aggregates, agg)
	}
	return a, nil
}

// Name returns the app's name, the first part of its topic names.
func (a *App) Name() string { return a.name }

// Group returns the consumer group id its workers share: the app's name.
func (a *App) Group() string { return a.name }

// Aggregates returns its aggregate types in declaration order.
func (a *App) Aggregates() []*Aggregate { return slices.Clone(a.aggregates) }

// Aggregate returns the aggregate type with the given name.
func (a *App) Aggregate(name string) (*Aggregate, bool) {
	agg, ok := a.byName[name]
	return agg, ok
}

// ByCommandTopic returns the aggregate type whose commands topic is topic.
func (a *App) ByCommandTopic(topic string) (*Aggregate, bool) {
	agg, ok := a.byCommands[topic]
	return agg, ok
}

// CommandTopics returns the commands topic of every aggregate type.
func (a *App) CommandTopics() []string {
	var ts []string
	for _, agg := range a.aggregates {
		ts = append(ts, a.Topics(agg).Commands)
	}
	return ts
}

// Topics names the five topics of one aggregate type T of app A.
type Topics struct {
	Commands  string // A.T.commands: commands in, key = aggregate id
	Events    string // A.T.events: events out, co-partitioned with commands
	Snapshots string // A.T.snapshots: compacted changelog of the state store
	Replies   string // A.T.replies: the default reply topic
	DLQ       string // A.T.dlq: copies of commands that could not be decided
}

// Topics returns the topic names of an aggregate type of this app.
func (a *App) Topics(agg *Aggregate) Topics {
	return TopicsOf(a.name, agg.name)
}

// TopicsOf returns the topic names of aggregate type typ of app.
func TopicsOf(app, typ string) Topics {
	p := app + "." + typ + "."
	return Topics{
		Commands:  p + "commands",
		Events:    p + "events",
		Snapshots: p + "snapshots",
		Replies:   p + "replies",
		DLQ:       p + "dlq",
	}
}

// Source returns the ce_source a worker writes on what it emits for agg:
// "A/T".
func (a *App) Source(agg *Aggregate) string { return a.name + "/" + agg.name }

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

const resetUsage = `Moves the committed offsets of the app's consumer group (the app's name)
on its commands topics: to the beginning, to the end, or to the first
command at or after a time. It prints the current and the new offset of
every partition; --dry-run stops there. It refuses while the group has
members: stop every worker first (a dry run only warns).

What a reset means for exactly-once:

  Back (beginning, an earlier time): the workers read the commands from
  there again. Every snapshot records the offset of the last command
  applied to its aggregate (commandOffset), and a worker skips a command
  at or below its aggregate's commandOffset: no decision, no event, no
  reply — its reply was sent the first time. Every command that reached
  Decide moves that offset (accepted, rejected, conflicting, expired or
  failed alike), so none of them is decided twice. Two kinds escape it:
  a command refused as INVALID (unreadable) moves no offset, so unless a
  later command of its aggregate was applied it is answered INVALID and
  dead-lettered again; and a command sent to the wrong partition is
  forwarded again, and the copy, at a new offset, is recognised by its
  command id in the aggregate's dedupe window (its last 32 replies): it
  gets its first reply again and writes no event — decided again only if
  its aggregate took more than 32 commands since. Commands after
  commandOffset were never applied and are decided normally.

  Forward (end, a later time): the commands skipped are never decided and
  never answered; callers waiting for their replies time out, and a retry
  with the same command id is decided as a new command.

--data-dir also drops that worker's local store of the app's partitions,
so that it restores them fully from the snapshots topic when it starts.
A reset does not need it (the store is a cache of that topic, as valid
after a reset as before); use it when the store is suspect.

Examples:
  decider reset --to beginning --dry-run
  decider reset --brokers k1:9092 --app bank --to 2025-06-01T12:00:00Z
  decider reset --to end --data-dir /var/lib/decider
`

func runReset(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("reset")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	to := fs.String("to", "", "where to: beginning, end, or an RFC 3339 time (required)")
	dryRun := fs.Bool("dry-run", false, "print the offsets, change nothing")
	dataDir := fs.String("data-dir", "", "a worker's data dir whose local store of the app's partitions is dropped too")
	if err := parse(fs, args); err != nil {
		return err
	}
	var at time.Time
	switch *to {
	case "beginning", "end":
	case "":
		return errors.New("--to is required: beginning, end, or an RFC 3339 time")
	default:
		var err error
		if at, err = time.Parse(time.RFC3339, *to); err != nil {
			return fmt.Errorf("--to %q: want beginning, end, or an RFC 3339 time: %w", *to, err)
		}
	}
	c, err := dial(ctx, kafkaOpts)
	if err != nil {
		return err
	}
	defer c.cl.Close()
	adm := c.adm
	app, err := discoverApp(ctx, adm, *appName)
	if err != nil {
		return err
	}
	group := app.Group()
	if err := checkNoMembers(ctx, adm, group); err != nil {
		if !*dryRun {
			return fmt.Errorf("reset refused: %w", err)
		}
		fmt.Fprintf(stdout, "warning: %v\n", err)
	}

	topics := app.CommandTopics()
	current, err := adm.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return fmt.Errorf("fetch the offsets of group %s: %w", group, err)
	}
	var target kadm.ListedOffsets
	switch *to {
	case "beginning":
		target, err = adm.ListStartOffsets(ctx, topics...)
	case "end":
		target, err = adm.ListEndOffsets(ctx, topics...)
	default:
		target, err = adm.ListOffsetsAfterMilli(ctx, at.UnixMilli(), topics...)
	}
	if err == nil {
		err = target.Error()
	}
	if err != nil {
		return fmt.Errorf("list the offsets of %v: %w", topics, err)
	}
	offsets := target.Offsets()
	fmt.Fprintf(stdout, "group %s, to %s:\n", group, *to)
	for _, o := range offsets.Sorted() {
		from := "none"
		if c, ok := current.Lookup(o.Topic, o.Partition); ok && c.Err == nil && c.At >= 0 {
			from = strconv.FormatInt(c.At, 10)
		}
		fmt.Fprintf(stdout, "  %s/%d: %s → %d\n", o.Topic, o.Partition, from, o.At)
	}
	if *dryRun {
		if *dataDir != "" {
			fmt.Fprintf(stdout, "would drop the local store of every partition of %v in %s\n", topics, filepath.Join(*dataDir, "state"))
		}
		fmt.Fprintln(stdout, "dry run: nothing changed")
		return nil
	}
	var store *statestore.Store
	local := filepath.Join(*dataDir, "state")
	if *dataDir != "" {
		// Opened before the offsets move: a store its worker still holds
		// stops the reset before it has changed anything.
		if store, err = openLocal(local); err != nil {
			return err
		}
		defer store.Close()
	}
	resp, err := adm.CommitOffsets(ctx, group, offsets)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("commit the offsets of group %s: %w", group, err)
	}
	fmt.Fprintf(stdout, "committed: the workers of group %s start from these offsets\n", group)
	if store != nil {
		return dropLocal(app, store, local, stdout)
	}
	return nil
}

// openLocal opens a worker's store in dir, which must exist.
func openLocal(dir string) (*statestore.Store, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	store, err := statestore.Open(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("--data-dir (is its worker running?): %w", err)
	}
	return store, nil
}

// dropLocal drops every partition of the app's aggregate types from store,
// the store in dir.
func dropLocal(app *topology.App, store *statestore.Store, dir string, stdout io.Writer) error {
	for _, agg := range app.Aggregates() {
		for p := range agg.Partitions() {
			if err := store.Drop(agg.Name(), p); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "dropped the local store of %s's %d partitions in %s: its worker restores them from %s\n",
			agg.Name(), agg.Partitions(), dir, app.Topics(agg).Snapshots)
	}
	return nil
}

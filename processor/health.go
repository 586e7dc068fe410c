package processor

import (
	"fmt"
	"slices"
	"strings"
)

// Ready reports whether the worker is a member of its group with every
// partition assigned to it restored, and when it is not, why. A worker
// that owns no partitions (more workers than partitions) is ready once it
// is a member.
func (w *Worker) Ready() (bool, string) {
	w.mu.Lock()
	sess := w.sess
	w.mu.Unlock()
	if sess == nil {
		return false, "not running"
	}
	// Asked without w.mu: the group's callbacks, which take w.mu, may run
	// with the client's group state locked.
	if member, _ := sess.Client().GroupMetadata(); member == "" {
		return false, "joining the consumer group"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var restoring []string
	for k, a := range w.parts {
		select {
		case <-a.ready:
		default:
			restoring = append(restoring, fmt.Sprintf("%s/%d", k.topic, k.partition))
		}
	}
	if len(restoring) > 0 {
		slices.Sort(restoring)
		return false, fmt.Sprintf("restoring %d of %d partitions: %s", len(restoring), len(w.parts), strings.Join(restoring, ", "))
	}
	return true, ""
}

// countOwned sets decider_partitions_owned from the current assignment.
// Called with w.mu held.
func (w *Worker) countOwned() {
	n := map[string]int{}
	for _, a := range w.parts {
		n[a.agg.Name()]++
	}
	for _, agg := range w.cfg.App.Aggregates() {
		w.metrics.owned.WithLabelValues(agg.Name()).Set(float64(n[agg.Name()]))
	}
}

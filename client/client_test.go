package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// bank starts a broker with the bank app's topics and, if worker is set, a
// worker; it returns the connection options.
func bank(t testing.TB, worker bool) []kgo.Opt {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	kafka := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kafka...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := topology.EnsureTopics(context.Background(), kadm.NewClient(cl), app, topology.TopicOptions{}); err != nil {
		t.Fatal(err)
	}
	if !worker {
		return kafka
	}
	store, err := statestore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := processor.New(processor.Config{App: app, Store: store, Kafka: kafka, InstanceID: "w", SessionTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		store.Close()
	})
	return kafka
}

// Many goroutines share one client; each gets its own reply.
func TestSendConcurrently(t *testing.T) {
	reg, _ := accounts.Registry()
	c, err := client.New(client.Config{App: "bank", Kafka: bank(t, true), Schemas: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("acc-%d", i)
			rep, err := c.Send(ctx, "account", id, accounts.OpenAccount{Owner: id}, client.CorrelationID("corr"))
			switch {
			case err != nil:
				errs <- err
			case rep.AggregateID != id || rep.Status != schemas.Accepted || rep.Version != 1:
				errs <- fmt.Errorf("%s got %+v", id, rep)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A retry with the same command id gets the first reply again.
	first, err := c.Send(ctx, "account", "acc-1", accounts.Deposit{Amount: 3}, client.CommandID("dep-1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Send(ctx, "account", "acc-1", accounts.Deposit{Amount: 3}, client.CommandID("dep-1"))
	if err != nil || again != first || first.Version != 2 {
		t.Fatalf("retry: %+v, %v; first %+v", again, err, first)
	}
}

// With no worker, Send times out with the command id to retry with.
func TestSendTimeoutCarriesCommandID(t *testing.T) {
	reg, _ := accounts.Registry()
	c, err := client.New(client.Config{App: "bank", Kafka: bank(t, false), Schemas: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Send(ctx, "account", "acc-1", accounts.OpenAccount{Owner: "x"}, client.CommandID("open-1"))
	var te *client.TimeoutError
	if !errors.As(err, &te) || te.CommandID != "open-1" || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a TimeoutError for open-1", err)
	}
	if _, err := c.Send(context.Background(), "account", "acc-1", struct{}{}); err == nil {
		t.Fatal("a value of an unbound type was sent")
	}
}

// Send a command to the account acc-1 of app bank and print the reply.
func ExampleClient_Send() {
	reg, err := accounts.Registry()
	if err != nil {
		panic(err)
	}
	c, err := client.New(client.Config{App: "bank", Kafka: []kgo.Opt{kgo.SeedBrokers("localhost:9092")}, Schemas: reg})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := c.Send(ctx, "account", "acc-1", accounts.Deposit{Amount: 100}, client.CommandID("deposit-42"))
	var timeout *client.TimeoutError
	if errors.As(err, &timeout) {
		fmt.Println("no reply yet; send again with command id", timeout.CommandID)
		return
	}
	fmt.Println(rep.Status, rep.Version, rep.Reason)
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
)

const sendUsage = `Sends one command to an aggregate, waits for its reply and prints it as
one JSON object with the decider.Reply field names. Exits 0 on any reply
(check "status"), 3 when no reply came before --timeout.

Examples:
  decider send --id acc-1 --type OpenAccount --data '{"owner":"ada"}'
  decider send --brokers localhost:9092 --aggregate account --id acc-1 --type Deposit --data '{"amount":100}'
  decider send --id acc-1 --type decider.examples.accounts.Withdraw --data '{"amount":30}' --command-id w-1
`

func runSend(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("send")
	kafkaOpts := kafkaFlags(fs)
	app := fs.String("app", "bank", "app name")
	aggregate := fs.String("aggregate", accounts.Name, "aggregate type")
	id := fs.String("id", "", "aggregate id (the command's key)")
	typ := fs.String("type", "", "command type: short (Deposit) or full Avro name")
	data := fs.String("data", "{}", "command as Avro JSON")
	commandID := fs.String("command-id", "", "command id (default random); reuse it to retry safely")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the reply")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" || *typ == "" {
		return errors.New("--id and --type are required")
	}
	agg, err := accounts.Aggregate(0)
	if err != nil {
		return err
	}
	if *aggregate != agg.Name() {
		return fmt.Errorf("--aggregate %q: this binary knows the example's %q only", *aggregate, agg.Name())
	}
	name, err := commandName(agg, *typ)
	if err != nil {
		return err
	}
	payload, err := agg.Schemas().EncodeJSON(name, []byte(*data))
	if err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	kafka, err := kafkaOpts()
	if err != nil {
		return err
	}
	cl, err := connect(ctx, kafka) // a clear error now, not a timeout waiting for the reply
	if err != nil {
		return err
	}
	cl.Close()
	c, err := client.New(client.Config{App: *app, Kafka: kafka, Schemas: agg.Schemas(), Source: "decider-cli"})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var opts []client.Option
	if *commandID != "" {
		opts = append(opts, client.CommandID(*commandID))
	}
	rep, err := c.Send(ctx, *aggregate, *id, client.Raw{Type: name, Payload: payload}, opts...)
	var te *client.TimeoutError
	if errors.As(err, &te) {
		return &exitCodeError{code: 3, err: err}
	}
	if err != nil {
		return err
	}
	return printReply(stdout, rep)
}

func printReply(w io.Writer, rep schemas.Reply) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// commandName resolves a short or full command type name.
func commandName(agg *topology.Aggregate, typ string) (string, error) {
	if n, ok := agg.CommandName(typ); ok {
		return n, nil
	}
	names := agg.Commands()
	for i, n := range names {
		names[i] = schemas.ShortName(n)
	}
	return "", fmt.Errorf("--type %q is not a command of %s (one of %s)", typ, agg.Name(), strings.Join(names, ", "))
}

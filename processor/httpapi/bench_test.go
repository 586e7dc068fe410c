package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
)

// A command's round trip through the HTTP API against the same command sent
// with the Go client, on one in-process broker and worker: what HTTP adds.
//
//	go test -run '^$' -bench . ./processor/httpapi
func BenchmarkSendReply(b *testing.B) {
	c := newCluster(b)
	n := c.start("bench")
	n.ready(b, "GET", "/v1/account/warm-up", "")
	agg, _ := c.app.Aggregate(accounts.Name)
	cl, err := client.New(client.Config{App: c.app.Name(), Kafka: c.kafka, Schemas: agg.Schemas()})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	b.Run("client", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := cl.Send(context.Background(), accounts.Name, fmt.Sprintf("c-%d", i%50), accounts.Deposit{Amount: 1}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("http", func(b *testing.B) {
		i := 0
		for b.Loop() {
			resp, err := http.Post(fmt.Sprintf("%s/v1/account/h-%d/commands", n.srv.URL, i%50), "application/json", strings.NewReader(`{"type":"Deposit","data":{"amount":1}}`))
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			i++
		}
	})
}

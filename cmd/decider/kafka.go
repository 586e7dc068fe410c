package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// kafkaFlags adds the flags that say how to reach a Kafka cluster — seed
// brokers, TLS, SASL — and returns a function that builds the client
// options from them once the flags are parsed. TLS is on with --tls or any
// --tls-* flag; SASL is on with --sasl-mechanism.
func kafkaFlags(fs *flag.FlagSet) func() ([]kgo.Opt, error) {
	brokers := fs.String("brokers", "localhost:9092", "comma-separated seed brokers")
	useTLS := fs.Bool("tls", false, "connect with TLS (implied by any --tls-* flag)")
	ca := fs.String("tls-ca", "", "PEM file of the CA certificates to trust (default: the system's)")
	cert := fs.String("tls-cert", "", "PEM file of the client certificate (with --tls-key)")
	key := fs.String("tls-key", "", "PEM file of the client certificate's private key (with --tls-cert)")
	serverName := fs.String("tls-server-name", "", "server name to verify the brokers' certificates against (default: each broker's host)")
	insecure := fs.Bool("tls-insecure-skip-verify", false, "do not verify the brokers' certificates (testing only)")
	mechanism := fs.String("sasl-mechanism", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default: no SASL)")
	user := fs.String("sasl-user", "", "SASL user name")
	password := fs.String("sasl-password", "", "SASL password (prefer DECIDER_SASL_PASSWORD: a flag shows in the process list)")
	return func() ([]kgo.Opt, error) {
		seeds := splitBrokers(*brokers)
		if len(seeds) == 0 {
			return nil, errors.New("--brokers: no broker given")
		}
		opts := []kgo.Opt{kgo.SeedBrokers(seeds...)}
		if *useTLS || *ca != "" || *cert != "" || *key != "" || *serverName != "" || *insecure {
			cfg, err := tlsConfig(*ca, *cert, *key, *serverName, *insecure)
			if err != nil {
				return nil, err
			}
			opts = append(opts, kgo.DialTLSConfig(cfg))
		}
		switch m, err := saslMechanism(*mechanism, *user, *password); {
		case err != nil:
			return nil, err
		case m != nil:
			opts = append(opts, kgo.SASL(m))
		}
		return opts, nil
	}
}

func tlsConfig(ca, cert, key, serverName string, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: insecure}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", cert, key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// saslMechanism returns the SASL mechanism the flags name, or nil for none.
func saslMechanism(name, user, password string) (sasl.Mechanism, error) {
	if name == "" {
		if user != "" || password != "" {
			return nil, errors.New("--sasl-user and --sasl-password need --sasl-mechanism")
		}
		return nil, nil
	}
	if user == "" {
		return nil, fmt.Errorf("--sasl-mechanism %s needs --sasl-user", name)
	}
	switch strings.ToUpper(name) {
	case "PLAIN":
		return plain.Auth{User: user, Pass: password}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: password}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("--sasl-mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", name)
}

func splitBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// connectTimeout bounds the first contact with the cluster.
const connectTimeout = 15 * time.Second

// connect returns a client of the cluster kafka reaches, once a broker
// answered it: a wrong address, certificate or password fails here, with
// the broker's reason, instead of in a retry loop of the first request.
func connect(ctx context.Context, kafka []kgo.Opt) (*kgo.Client, error) {
	cl, err := kgo.NewClient(kafka...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			err = fmt.Errorf("%w (the broker closed the connection: it refused the SASL mechanism, user or password, or the TLS client certificate, or it wants TLS)", err)
		}
		return nil, fmt.Errorf("connect to the Kafka cluster (check --brokers, --tls-*, --sasl-*): %w", err)
	}
	return cl, nil
}

// conn is a connection an operator command works through.
type conn struct {
	kafka []kgo.Opt // the options it was made with
	cl    *kgo.Client
	adm   *kadm.Client
}

// dial connects with the command's Kafka flags (see connect); the caller
// closes c.cl.
func dial(ctx context.Context, kafkaOpts func() ([]kgo.Opt, error)) (*conn, error) {
	kafka, err := kafkaOpts()
	if err != nil {
		return nil, err
	}
	cl, err := connect(ctx, kafka)
	if err != nil {
		return nil, err
	}
	return &conn{kafka: kafka, cl: cl, adm: kadm.NewClient(cl)}, nil
}

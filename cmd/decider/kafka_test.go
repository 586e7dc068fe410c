package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// cluster starts an in-process broker for the test and returns its address.
func cluster(t *testing.T, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// decider runs the binary's command line and returns what it printed.
func decider(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	err := dispatch(ctx, args, &out)
	return out.String(), err
}

// A command connects to a broker that requires SASL with the right
// mechanism and credentials (the password from the environment), and fails
// at once, saying why, with a wrong password or none.
func TestKafkaFlagsSASL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, m := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(m, func(t *testing.T) {
			addr := cluster(t, kfake.EnableSASL(), kfake.Superuser(m, "ops", "s3cret"))
			t.Setenv("DECIDER_SASL_PASSWORD", "s3cret")
			out, err := decider(ctx, "topics", "create", "--brokers", addr, "--partitions", "2", "--sasl-mechanism", strings.ToLower(m), "--sasl-user", "ops")
			if err != nil || !strings.Contains(out, "bank.account.snapshots: 2 partitions, replication factor 1, cleanup.policy compact") {
				t.Fatalf("topics create with SASL %s: %v\n%s", m, err, out)
			}
			start := time.Now()
			_, err = decider(ctx, "topics", "verify", "--brokers", addr, "--sasl-mechanism", m, "--sasl-user", "ops", "--sasl-password", "wrong")
			// Kafka answers SASL_AUTHENTICATION_FAILED; kfake closes the connection.
			if err == nil || !strings.Contains(err.Error(), "connect to the Kafka cluster") || !strings.Contains(err.Error(), "refused the SASL mechanism, user or password") {
				t.Fatalf("wrong password: %v, want a failed connection blaming the credentials", err)
			}
			if d := time.Since(start); d > connectTimeout/2 {
				t.Errorf("a wrong password took %v to fail", d)
			}
			os.Unsetenv("DECIDER_SASL_PASSWORD")
			if _, err := decider(ctx, "topics", "verify", "--brokers", addr); err == nil || !strings.Contains(err.Error(), "connect to the Kafka cluster") {
				t.Fatalf("no SASL against a SASL broker: %v, want a failed connection", err)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sasl-mechanism", "GSSAPI", "--sasl-user", "u"}, `--sasl-mechanism "GSSAPI": want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`},
		{[]string{"--sasl-mechanism", "PLAIN"}, "needs --sasl-user"},
		{[]string{"--sasl-user", "u"}, "need --sasl-mechanism"},
		{[]string{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-ca", "/nonexistent.pem"}, "--tls-ca: open /nonexistent.pem"},
		{[]string{"--brokers", " , "}, "no broker given"},
	} {
		if _, err := decider(ctx, append([]string{"topics", "verify"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("topics verify %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// A command connects over TLS to a broker whose certificate a CA file
// vouches for, with a client certificate when the broker requires one; it
// fails, saying why, when it does not trust the broker, names another
// server, or has no client certificate.
func TestKafkaFlagsTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, nil, nil, "decider test CA")
	server, serverKey := newCert(t, ca, caKey, "localhost")
	client, clientKey := newCert(t, ca, caKey, "ops")
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	certFile := writePEM(t, dir, "client.pem", "CERTIFICATE", client.Raw)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writePEM(t, dir, "client-key.pem", "EC PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	addr := cluster(t, kfake.TLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{server.Raw}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := decider(ctx, "topics", "create", "--brokers", addr, "--partitions", "3", "--tls-ca", caFile, "--tls-cert", certFile, "--tls-key", keyFile)
	if err != nil || !strings.Contains(out, "bank.account.commands: 3 partitions") {
		t.Fatalf("topics create over TLS: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // "": connects
	}{
		{"skip verify", []string{"--tls-insecure-skip-verify", "--tls-cert", certFile, "--tls-key", keyFile}, ""},
		{"unknown CA", []string{"--tls", "--tls-cert", certFile, "--tls-key", keyFile}, "certificate signed by unknown authority"},
		{"other server name", []string{"--tls-ca", caFile, "--tls-server-name", "kafka.example.com", "--tls-cert", certFile, "--tls-key", keyFile}, "kafka.example.com"},
		{"no client certificate", []string{"--tls-ca", caFile}, "connect to the Kafka cluster"},
		{"no TLS", nil, "connect to the Kafka cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := decider(ctx, append([]string{"topics", "verify", "--brokers", addr}, tc.args...)...)
			switch {
			case tc.want == "" && (err != nil || !strings.HasPrefix(out, "ok:")):
				t.Fatalf("topics verify: %v\n%s", err, out)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("topics verify: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// newCert returns a certificate for name with its key, signed by parent
// (self-signed, a CA, when parent is nil). The certificate is valid for
// 127.0.0.1 and localhost.
func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Package deploy_test checks the deployment files in this directory against
// the code they deploy. Nothing here starts Docker or Kubernetes (neither
// runs where these tests run); the files are parsed and compared with:
//
//   - the flags of `decider run --help` (every --flag and DECIDER_* variable
//     that compose, Kubernetes and the Dockerfile set must exist);
//   - a real worker (`decider dev` as a subprocess): the probe and scrape
//     paths must answer 200, and every metric name in the dashboard's and
//     the alerts' PromQL must be in its /metrics output, or, for metrics
//     that only appear after an event this test does not cause (a
//     transaction abort), among the names declared in processor/metrics.go;
//   - each other: ports, service names, data dir, instance ids, volumes,
//     grace periods against the transaction timeout, mounted paths.
//
// When promtool is on PATH (Debian: apt-get install prometheus),
// TestPromtool also runs `promtool check config`, `check rules` and the
// alert rules' unit tests (prometheus/alerts_test.yml); otherwise it skips.
package deploy_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v3"
)

// decider is the binary built from ../cmd/decider by TestMain.
var decider string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "decider-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	decider = filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", decider, "../cmd/decider").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ../cmd/decider: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// --- decider run's flags -------------------------------------------------

// flagSet maps the flags of `decider run` to their defaults ("" if none).
type flagSet map[string]string

var (
	flagLine    = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)(?: \w+)?\n\s+(.*)$`)
	flagDefault = regexp.MustCompile(`\(default (?:"([^"]*)"|([^)]*))\)$`)
)

// runFlags reads the flags from `decider run --help`, which exits with code
// 2 (flag.ErrHelp) after printing them.
var runFlags = sync.OnceValues(func() (flagSet, error) {
	out, err := exec.Command(decider, "run", "--help").CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		return nil, fmt.Errorf("decider run --help: %v, want exit code 2\n%s", err, out)
	}
	fs := flagSet{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		d := flagDefault.FindStringSubmatch(m[2])
		if d != nil {
			fs[m[1]] = d[1] + d[2]
		} else {
			fs[m[1]] = ""
		}
	}
	for _, want := range []string{"brokers", "data-dir", "http", "instance", "transaction-timeout"} {
		if _, ok := fs[want]; !ok {
			return nil, fmt.Errorf("no -%s in decider run --help (parsed %v):\n%s", want, fs, out)
		}
	}
	return fs, nil
})

func flags(t *testing.T) flagSet {
	t.Helper()
	fs, err := runFlags()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// envName is the environment variable of a flag: DECIDER_<FLAG>, - → _.
func envName(flag string) string {
	return "DECIDER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// value is a flag's value in a worker's environment: the variable's if
// set, else the default.
func (fs flagSet) value(env map[string]string, flag string) string {
	if v, ok := env[envName(flag)]; ok {
		return v
	}
	return fs[flag]
}

// checkEnv checks that every DECIDER_* variable in env is a flag's.
func (fs flagSet) checkEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	for k := range env {
		if !strings.HasPrefix(k, "DECIDER_") {
			continue
		}
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "DECIDER_"), "_", "-"))
		if _, ok := fs[flag]; !ok {
			t.Errorf("%s: %s is no flag of decider run (no --%s)", where, k, flag)
		}
	}
}

// checkArgs checks that args are "run" and flags of decider run.
func (fs flagSet) checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != "run" {
		t.Errorf("%s: arguments %q, want the run command first", where, args)
		return
	}
	for _, a := range args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := fs[name]; strings.HasPrefix(a, "-") && !ok {
			t.Errorf("%s: %s is no flag of decider run", where, a)
		}
	}
}

// port is the port of a host:port address.
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return p
}

// duration parses a duration, failing the test if it cannot.
func duration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	return d
}

func TestRunHelpListsFlags(t *testing.T) {
	fs := flags(t)
	if fs["brokers"] != "localhost:9092" || fs["transaction-timeout"] != "10s" {
		t.Errorf("defaults read from --help: brokers %q, transaction-timeout %q", fs["brokers"], fs["transaction-timeout"])
	}
}

// --- every file parses ---------------------------------------------------

// readYAML decodes the documents of a YAML file into yaml.Nodes, failing on
// a syntax error or a mapping with a key given twice.
func readYAML(t *testing.T, path string) []*yaml.Node {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		var v any // decoded too, for the checks a node skips (keys given twice)
		if err == nil {
			err = n.Decode(&v)
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, &n)
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// decodeYAML decodes a one-document YAML file into v.
func decodeYAML(t *testing.T, path string, v any) {
	t.Helper()
	docs := readYAML(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	if err := docs[0].Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func decodeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestEveryFileParses(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(path) {
		case ".yml", ".yaml":
			readYAML(t, path)
		case ".json":
			var v map[string]any
			decodeJSON(t, path, &v)
		default:
			return nil
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("parsed %d YAML and JSON files, want the 10 or more of deploy/", n)
	}
}

// --- Dockerfile ----------------------------------------------------------

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct{ cmd, args string }

// dockerStages reads the Dockerfile's stages, each a list of instructions
// starting with its FROM.
func dockerStages(t *testing.T) [][]instruction {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]instruction
	var line string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(s, `\`); ok {
			line += cont + " "
			continue
		}
		cmd, args, _ := strings.Cut(line+s, " ")
		line = ""
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %s before FROM", in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a build stage and a final one", len(stages))
	}
	return stages
}

// last returns the args of the last instruction cmd of a stage.
func last(stage []instruction, cmd string) string {
	var args string
	for _, in := range stage {
		if in.cmd == cmd {
			args = in.args
		}
	}
	return args
}

// execForm decodes an instruction's JSON array form.
func execForm(t *testing.T, in string) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in), &v); err != nil {
		t.Fatalf("Dockerfile: %q is not in exec form: %v", in, err)
	}
	return v
}

// imageEnv is the final stage's ENV: the defaults of every container of the
// image.
func imageEnv(t *testing.T) map[string]string {
	t.Helper()
	stages := dockerStages(t)
	env := map[string]string{}
	for _, in := range stages[len(stages)-1] {
		if in.cmd != "ENV" {
			continue
		}
		for _, kv := range strings.Fields(in.args) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("Dockerfile: ENV %s: want the KEY=value form", in.args)
			}
			env[k] = v
		}
	}
	return env
}

// imageUser is the numeric user id the image runs as.
func imageUser(t *testing.T) int {
	t.Helper()
	stages := dockerStages(t)
	user := last(stages[len(stages)-1], "USER")
	uid, _, _ := strings.Cut(user, ":")
	n, err := strconv.Atoi(uid)
	if err != nil {
		t.Fatalf("Dockerfile: USER %q, want a numeric uid (runAsNonRoot can only check numbers)", user)
	}
	return n
}

var goBuildOut = regexp.MustCompile(`\bgo build\b.*\s-o\s+(\S+)\s+(\S+)`)

func TestDockerfile(t *testing.T) {
	stages := dockerStages(t)
	final := stages[len(stages)-1]
	env := imageEnv(t)
	fs := flags(t)
	fs.checkEnv(t, "Dockerfile ENV", env)

	// The build: static, trimmed, of the decider command, written to out.
	var out string
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st {
			if m := goBuildOut.FindStringSubmatch(in.args); in.cmd == "RUN" && m != nil {
				for _, want := range []string{"CGO_ENABLED=0", "-trimpath"} {
					if !strings.Contains(in.args, want) {
						t.Errorf("Dockerfile: %q lacks %s", in.args, want)
					}
				}
				if m[2] != "./cmd/decider" {
					t.Errorf("Dockerfile builds %s, want ./cmd/decider", m[2])
				}
				out = m[1]
			}
		}
	}
	if out == "" {
		t.Fatal("Dockerfile: no RUN go build -o … in a build stage")
	}

	// The entry point is the binary built, copied into the final stage.
	entry := execForm(t, last(final, "ENTRYPOINT"))
	var copied bool
	for _, in := range final {
		f := strings.Fields(in.args)
		if in.cmd == "COPY" && len(f) >= 2 && f[len(f)-2] == out && f[len(f)-1] == entry[0] {
			copied = true
		}
	}
	if len(entry) != 1 || !copied {
		t.Errorf("Dockerfile: ENTRYPOINT %q, want the binary %s copied from the build", entry, out)
	}
	if cmd := execForm(t, last(final, "CMD")); !slices.Equal(cmd, []string{"run"}) {
		t.Errorf("Dockerfile: CMD %q, want [run]", cmd)
	}

	// It runs as a user other than root, who owns the data dir.
	uid := imageUser(t)
	if uid == 0 {
		t.Error("Dockerfile: USER is root")
	}
	dataDir := fs.value(env, "data-dir")
	var owned bool
	for _, in := range final {
		f := strings.Fields(in.args)
		if in.cmd == "COPY" && slices.Contains(f, fmt.Sprintf("--chown=%d:%d", uid, uid)) && f[len(f)-1] == dataDir {
			owned = true
		}
	}
	if !owned {
		t.Errorf("Dockerfile: the data dir %s is not created owned by uid %d", dataDir, uid)
	}

	// It exposes the port the HTTP API listens on.
	if p := port(t, fs.value(env, "http")); last(final, "EXPOSE") != p {
		t.Errorf("Dockerfile: EXPOSE %q, but the HTTP API listens on port %s", last(final, "EXPOSE"), p)
	}
}

// --- docker compose ------------------------------------------------------

type composeFile struct {
	Services map[string]composeService
	Volumes  map[string]any
}

type composeService struct {
	Image string
	Build *struct {
		Context    string
		Dockerfile string
	}
	Command         []string
	Environment     map[string]string
	Ports           []string
	Volumes         []string
	StopGracePeriod string `yaml:"stop_grace_period"`
}

const composeDir = "compose"

func readCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	decodeYAML(t, filepath.Join(composeDir, "docker-compose.yml"), &c)
	return c
}

// workers returns the services built from this directory's Dockerfile, by
// name.
func (c composeFile) workers(t *testing.T) map[string]composeService {
	t.Helper()
	dockerfile, err := os.Stat("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ws := map[string]composeService{}
	for name, s := range c.Services {
		if s.Build == nil {
			continue
		}
		if fi, err := os.Stat(filepath.Join(composeDir, s.Build.Context, s.Build.Dockerfile)); err == nil && os.SameFile(fi, dockerfile) {
			ws[name] = s
		}
	}
	return ws
}

// hostPath maps a path in a service's container to the file of this
// directory mounted there (a bind mount with a relative source), "" if none.
func (s composeService) hostPath(container string) string {
	for _, v := range s.Volumes {
		f := strings.Split(v, ":")
		if len(f) < 2 || !strings.HasPrefix(f[0], ".") {
			continue
		}
		if rest, ok := strings.CutPrefix(container, f[1]); ok && (rest == "" || rest[0] == '/') {
			return filepath.Join(composeDir, f[0], rest)
		}
	}
	return ""
}

func TestCompose(t *testing.T) {
	fs := flags(t)
	c := readCompose(t)
	workers := c.workers(t)
	if len(workers) != 3 {
		t.Fatalf("compose: %d services built from deploy/Dockerfile, want 3 workers", len(workers))
	}
	instances, volumes := map[string]string{}, map[string]string{}
	for name, w := range workers {
		env := imageEnv(t)
		for k, v := range w.Environment {
			env[k] = v
		}
		fs.checkEnv(t, "compose "+name, env)
		if w.Command != nil {
			fs.checkArgs(t, "compose "+name, w.Command)
		}
		httpPort := port(t, fs.value(env, "http"))

		inst := fs.value(env, "instance")
		if inst == "" || instances[inst] != "" {
			t.Errorf("compose %s: instance id %q, want one of its own (%s has it)", name, inst, instances[inst])
		}
		instances[inst] = name
		if adv := fs.value(env, "advertise"); adv != name+":"+httpPort {
			t.Errorf("compose %s: advertises %q, want %s:%s (its service name, the HTTP port)", name, adv, name, httpPort)
		}
		for _, b := range strings.Split(fs.value(env, "brokers"), ",") {
			host, _, _ := strings.Cut(b, ":")
			if _, ok := c.Services[host]; !ok {
				t.Errorf("compose %s: broker %s is no service", name, b)
			}
		}

		var published bool
		for _, p := range w.Ports {
			published = published || strings.HasSuffix(p, ":"+httpPort)
		}
		if !published {
			t.Errorf("compose %s: ports %q do not publish the HTTP port %s", name, w.Ports, httpPort)
		}

		dataDir := fs.value(env, "data-dir")
		var vol string
		for _, v := range w.Volumes {
			if src, dst, _ := strings.Cut(v, ":"); dst == dataDir {
				vol = src
			}
		}
		if _, ok := c.Volumes[vol]; !ok || volumes[vol] != "" {
			t.Errorf("compose %s: data dir %s on volume %q, want a named volume of its own (%s has it)", name, dataDir, vol, volumes[vol])
		}
		volumes[vol] = name

		txn := duration(t, "transaction timeout", fs.value(env, "transaction-timeout"))
		if grace := duration(t, "compose "+name+" stop_grace_period", w.StopGracePeriod); grace <= txn {
			t.Errorf("compose %s: stop_grace_period %v, want more than the transaction timeout %v", name, grace, txn)
		}
	}

	// Every file mounted from this directory exists.
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			if src, _, _ := strings.Cut(v, ":"); strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(composeDir, src)); err != nil {
					t.Errorf("compose %s mounts %s: %v", name, src, err)
				}
			}
		}
	}
}

// --- Prometheus ----------------------------------------------------------

type promConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

type alertRule struct {
	Alert       string
	Expr        string
	For         string
	Labels      map[string]string
	Annotations map[string]string
}

func readAlerts(t *testing.T) []alertRule {
	t.Helper()
	var f struct {
		Groups []struct {
			Name  string
			Rules []alertRule
		}
	}
	decodeYAML(t, filepath.Join("prometheus", "alerts.yml"), &f)
	var rules []alertRule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// promConfigPath is the Prometheus config compose runs, as a path here.
func promConfigPath(t *testing.T) string {
	t.Helper()
	s := readCompose(t).Services["prometheus"]
	for _, a := range s.Command {
		if f, ok := strings.CutPrefix(a, "--config.file="); ok {
			return s.hostPath(f)
		}
	}
	t.Fatal("compose: the prometheus service has no --config.file")
	return ""
}

// deciderJob returns the scrape config's job of the workers: its name and
// metrics path.
func deciderJob(t *testing.T) (name, metricsPath string, targets []string) {
	t.Helper()
	var cfg promConfig
	path := promConfigPath(t)
	decodeYAML(t, path, &cfg)
	for _, r := range cfg.RuleFiles {
		if _, err := os.Stat(filepath.Join(filepath.Dir(path), r)); err != nil {
			t.Errorf("%s: rule file %s: %v", path, r, err)
		}
	}
	for _, sc := range cfg.ScrapeConfigs {
		if sc.JobName == "decider" {
			for _, st := range sc.StaticConfigs {
				targets = append(targets, st.Targets...)
			}
			return sc.JobName, cmp.Or(sc.MetricsPath, "/metrics"), targets
		}
	}
	t.Fatalf("%s: no scrape job decider", path)
	return "", "", nil
}

func TestPrometheusConfig(t *testing.T) {
	fs := flags(t)
	job, _, targets := deciderJob(t)
	var want []string
	for name, w := range readCompose(t).workers(t) {
		env := imageEnv(t)
		for k, v := range w.Environment {
			env[k] = v
		}
		want = append(want, name+":"+port(t, fs.value(env, "http")))
	}
	slices.Sort(want)
	slices.Sort(targets)
	if !slices.Equal(targets, want) {
		t.Errorf("prometheus job %s scrapes %q, want the compose workers %q", job, targets, want)
	}
	// The alerts that name a job name this one.
	jobRef := regexp.MustCompile(`\bjob="([^"]*)"`)
	for _, r := range readAlerts(t) {
		for _, m := range jobRef.FindAllStringSubmatch(r.Expr, -1) {
			if m[1] != job {
				t.Errorf("alert %s selects job %q, but the workers' scrape job is %q", r.Alert, m[1], job)
			}
		}
	}
}

func TestAlertRules(t *testing.T) {
	rules := readAlerts(t)
	if len(rules) < 4 {
		t.Fatalf("%d alert rules, want at least lag, aborts, readiness and dead letters", len(rules))
	}
	for _, r := range rules {
		if r.Alert == "" || r.Expr == "" {
			t.Errorf("rule %+v: want an alert name and an expr", r)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
			t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, s)
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("alert %s: no %s annotation", r.Alert, a)
			}
		}
	}
}

// TestPromtool runs Prometheus's own checks when promtool is installed.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (Debian: apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "config", promConfigPath(t)},
		{"check", "rules", filepath.Join("prometheus", "alerts.yml")},
		{"test", "rules", filepath.Join("prometheus", "alerts_test.yml")},
	} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// --- Grafana -------------------------------------------------------------

type dashboard struct {
	Title, UID string
	Templating struct {
		List []struct {
			Type, Name string
			Query      any // a string, or {"query": …} for query variables
			Datasource struct{ UID string }
		}
	}
	Panels []struct {
		ID         int
		Type       string
		Title      string
		Datasource struct{ UID string }
		Targets    []struct {
			Expr       string
			Datasource struct{ UID string }
		}
	}
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	decodeJSON(t, filepath.Join("grafana", "decider.json"), &d)
	return d
}

// variableQuery is a query variable's query as text.
func variableQuery(q any) string {
	if m, ok := q.(map[string]any); ok {
		q = m["query"]
	}
	s, _ := q.(string)
	return s
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)

// dashboardExprs returns the dashboard's PromQL: its panels' and its
// variables' (the series selector of label_values).
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	d := readDashboard(t)
	var exprs []string
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(variableQuery(v.Query))
		if m == nil {
			t.Fatalf("dashboard variable %s: query %v, want label_values(<selector>, <label>)", v.Name, v.Query)
		}
		exprs = append(exprs, m[1])
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard: title %q, uid %q, want both", d.Title, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "datasource" && v.Query != "prometheus" {
			t.Errorf("dashboard variable %s: data sources of type %v, want prometheus", v.Name, v.Query)
		}
		if v.Type == "query" && v.Datasource.UID != "${datasource}" {
			t.Errorf("dashboard variable %s: data source %q, want ${datasource}", v.Name, v.Datasource.UID)
		}
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" || vars["instance"] != "query" {
		t.Errorf("dashboard variables %v, want datasource (a data source), job and instance (queries)", vars)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("dashboard: panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %q and %d queries, want ${datasource} and some", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "${datasource}" || !strings.Contains(tg.Expr, `job=~"$job", instance=~"$instance"`) {
				t.Errorf("panel %q: query %q on %q, want ${datasource} and the job and instance selectors", p.Title, tg.Expr, tg.Datasource.UID)
			}
		}
	}
	// What the dashboard is for: each of these is shown.
	all := strings.Join(dashboardExprs(t), "\n")
	for _, m := range []string{
		"decider_commands_total", "decider_command_latency_seconds_bucket", "decider_decide_duration_seconds_bucket",
		"decider_transactions_total", "decider_transaction_aborts_total", "decider_consumer_lag_records",
		"decider_restore_records_total", "decider_restore_duration_seconds", "decider_partitions_owned", "decider_ready",
		"decider_dead_letters_total", "decider_state_store_size_bytes", "decider_state_store_cache_lookups_total",
	} {
		if !strings.Contains(all, m) {
			t.Errorf("dashboard: no panel shows %s", m)
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	c := readCompose(t)
	g := c.Services["grafana"]
	prov := g.hostPath("/etc/grafana/provisioning")
	if prov != filepath.Join("grafana", "provisioning") {
		t.Fatalf("compose grafana: /etc/grafana/provisioning is %q, want grafana/provisioning", prov)
	}
	var ds struct {
		Datasources []struct{ Type, URL string }
	}
	decodeYAML(t, filepath.Join(prov, "datasources", "prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" {
		t.Fatalf("grafana data sources %+v, want one of type prometheus", ds.Datasources)
	}
	host := strings.TrimPrefix(ds.Datasources[0].URL, "http://")
	if svc, _, _ := strings.Cut(host, ":"); c.Services[svc].Image == "" || !strings.Contains(c.Services[svc].Image, "prometheus") {
		t.Errorf("grafana data source %s: no Prometheus service %q in compose", ds.Datasources[0].URL, svc)
	}
	var dp struct {
		Providers []struct {
			Options struct{ Path string }
		}
	}
	decodeYAML(t, filepath.Join(prov, "dashboards", "decider.yml"), &dp)
	if len(dp.Providers) != 1 {
		t.Fatalf("grafana dashboard providers %+v, want one", dp.Providers)
	}
	dash := g.hostPath(dp.Providers[0].Options.Path + "/decider.json")
	if dash != filepath.Join("grafana", "decider.json") {
		t.Errorf("grafana loads dashboards from %s, where compose mounts %q, not grafana/decider.json", dp.Providers[0].Options.Path, dash)
	}
}

// --- Kubernetes ----------------------------------------------------------

type k8sMeta struct {
	Kind     string
	Metadata struct{ Name string }
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type envVar struct {
	Name      string
	Value     string
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type probe struct {
	HTTPGet *struct {
		Path string
		Port string
	} `yaml:"httpGet"`
}

type container struct {
	Args  []string
	Env   []envVar
	Ports []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	ReadinessProbe probe `yaml:"readinessProbe"`
	LivenessProbe  probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests, Limits map[string]string
	}
	VolumeMounts []struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type statefulSet struct {
	Spec struct {
		ServiceName string `yaml:"serviceName"`
		Selector    labelSelector
		Template    struct {
			Metadata struct{ Labels map[string]string }
			Spec     struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
					RunAsUser    int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []container
			}
		}
		VolumeClaimTemplates []struct {
			Metadata struct{ Name string }
		} `yaml:"volumeClaimTemplates"`
	}
}

type service struct {
	Spec struct {
		ClusterIP string `yaml:"clusterIP"`
		Selector  map[string]string
		Ports     []struct {
			Port       int
			TargetPort string `yaml:"targetPort"`
		}
	}
}

type pdb struct {
	Spec struct {
		MaxUnavailable int `yaml:"maxUnavailable"`
		Selector       labelSelector
	}
}

// k8sObjects are the objects of deploy/k8s, by kind and name, as read from
// the files its kustomization.yaml lists (which must be all the others).
func k8sObjects(t *testing.T) map[string]map[string]*yaml.Node {
	t.Helper()
	var kust struct{ Resources []string }
	decodeYAML(t, filepath.Join("k8s", "kustomization.yaml"), &kust)
	files, err := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var others []string
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			others = append(others, filepath.Base(f))
		}
	}
	if !slices.Equal(others, slices.Sorted(slices.Values(kust.Resources))) {
		t.Errorf("k8s/kustomization.yaml lists %q, want every other file: %q", kust.Resources, others)
	}
	objs := map[string]map[string]*yaml.Node{}
	for _, f := range others {
		for _, doc := range readYAML(t, filepath.Join("k8s", f)) {
			var m k8sMeta
			if err := doc.Decode(&m); err != nil || m.Kind == "" || m.Metadata.Name == "" {
				t.Fatalf("k8s/%s: a document without kind and name (%v)", f, err)
			}
			if objs[m.Kind] == nil {
				objs[m.Kind] = map[string]*yaml.Node{}
			}
			if objs[m.Kind][m.Metadata.Name] != nil {
				t.Errorf("k8s: two objects %s %s", m.Kind, m.Metadata.Name)
			}
			objs[m.Kind][m.Metadata.Name] = doc
		}
	}
	return objs
}

// one decodes the only object of a kind into v and returns its name.
func one(t *testing.T, objs map[string]map[string]*yaml.Node, kind string, v any) string {
	t.Helper()
	if len(objs[kind]) != 1 {
		t.Fatalf("k8s: %d objects of kind %s, want 1", len(objs[kind]), kind)
	}
	for name, n := range objs[kind] {
		if err := n.Decode(v); err != nil {
			t.Fatalf("k8s %s %s: %v", kind, name, err)
		}
		return name
	}
	return ""
}

// selects reports whether a selector selects pods with these labels.
func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

var (
	envRef    = regexp.MustCompile(`\$\((\w+)\)`)
	advertise = regexp.MustCompile(`^\$\((\w+)\)\.([a-z0-9-]+)\.\$\((\w+)\)\.svc\.cluster\.local:(\d+)$`)
)

// probePaths are the HTTP paths the Kubernetes probes ask, checked against
// a real worker by TestAgainstWorker.
func probePaths(t *testing.T) (readiness, liveness string) {
	t.Helper()
	var sts statefulSet
	one(t, k8sObjects(t), "StatefulSet", &sts)
	c := sts.Spec.Template.Spec.Containers[0]
	if c.ReadinessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet == nil {
		t.Fatal("k8s: want HTTP readiness and liveness probes")
	}
	return c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path
}

func TestKubernetes(t *testing.T) {
	fs := flags(t)
	objs := k8sObjects(t)
	var sts statefulSet
	one(t, objs, "StatefulSet", &sts)
	pod := sts.Spec.Template
	if !selects(sts.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("StatefulSet: selector %v does not select its pods %v", sts.Spec.Selector.MatchLabels, pod.Metadata.Labels)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("StatefulSet: %d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	fs.checkArgs(t, "StatefulSet args", c.Args)

	// The environment: flags' variables, the downward API's fields, each
	// $(VAR) defined above its use in the list (Kubernetes expands only
	// those; not the image's ENV).
	env, fields, defined := imageEnv(t), map[string]string{}, map[string]bool{}
	for _, e := range c.Env {
		for _, ref := range envRef.FindAllStringSubmatch(e.Value, -1) {
			if !defined[ref[1]] {
				t.Errorf("StatefulSet env %s: $(%s) is not defined before it", e.Name, ref[1])
			}
		}
		env[e.Name], defined[e.Name] = e.Value, true
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	fs.checkEnv(t, "StatefulSet env", env)
	httpPort := port(t, fs.value(env, "http"))

	// Instance id and advertised address: the pod's stable name, in the
	// headless Service's DNS.
	if m := envRef.FindStringSubmatch(fs.value(env, "instance")); m == nil || m[0] != fs.value(env, "instance") || fields[m[1]] != "metadata.name" {
		t.Errorf("StatefulSet: instance id %q, want $(VAR) of the pod's metadata.name", fs.value(env, "instance"))
	}
	adv := advertise.FindStringSubmatch(fs.value(env, "advertise"))
	if adv == nil || fields[adv[1]] != "metadata.name" || adv[2] != sts.Spec.ServiceName || fields[adv[3]] != "metadata.namespace" || adv[4] != httpPort {
		t.Errorf("StatefulSet: advertises %q, want $(POD_NAME).%s.$(POD_NAMESPACE).svc.cluster.local:%s from the downward API", fs.value(env, "advertise"), sts.Spec.ServiceName, httpPort)
	}
	var headless service
	if n := objs["Service"][sts.Spec.ServiceName]; n == nil || n.Decode(&headless) != nil || headless.Spec.ClusterIP != "None" {
		t.Errorf("StatefulSet: serviceName %q is no headless Service", sts.Spec.ServiceName)
	}

	// The HTTP port: the container's, the probes', the Services'.
	var named string
	for _, p := range c.Ports {
		if strconv.Itoa(p.ContainerPort) == httpPort {
			named = p.Name
		}
	}
	if named == "" {
		t.Errorf("StatefulSet: no containerPort %s (the HTTP API)", httpPort)
	}
	for _, p := range []probe{c.ReadinessProbe, c.LivenessProbe} {
		if p.HTTPGet == nil || (p.HTTPGet.Port != named && p.HTTPGet.Port != httpPort) {
			t.Errorf("StatefulSet: a probe on %+v, want HTTP on port %s (%s)", p.HTTPGet, httpPort, named)
		}
	}
	for name, n := range objs["Service"] {
		var s service
		if err := n.Decode(&s); err != nil {
			t.Fatal(err)
		}
		if !selects(s.Spec.Selector, pod.Metadata.Labels) {
			t.Errorf("Service %s: selector %v does not select the workers", name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort != named && p.TargetPort != httpPort {
				t.Errorf("Service %s: targetPort %q, want the HTTP port %s (%s)", name, p.TargetPort, httpPort, named)
			}
		}
	}

	// The state store on the volume claim.
	dataDir := fs.value(env, "data-dir")
	var mounted bool
	for _, m := range c.VolumeMounts {
		for _, v := range sts.Spec.VolumeClaimTemplates {
			mounted = mounted || (m.Name == v.Metadata.Name && m.MountPath == dataDir)
		}
	}
	if !mounted {
		t.Errorf("StatefulSet: the data dir %s is not on a volumeClaimTemplate", dataDir)
	}

	// Stopping: longer than a transaction.
	txn := duration(t, "transaction timeout", fs.value(env, "transaction-timeout"))
	if grace := time.Duration(pod.Spec.TerminationGracePeriodSeconds) * time.Second; grace <= txn {
		t.Errorf("StatefulSet: terminationGracePeriodSeconds %v, want more than the transaction timeout %v", grace, txn)
	}

	// Resources, and not root: the image's user.
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
			t.Errorf("StatefulSet: %s request %q, limit %q, want both", r, c.Resources.Requests[r], c.Resources.Limits[r])
		}
	}
	sc := pod.Spec.SecurityContext
	if !sc.RunAsNonRoot || sc.RunAsUser != imageUser(t) {
		t.Errorf("StatefulSet: runAsNonRoot %v as %d, want true as the image's user %d", sc.RunAsNonRoot, sc.RunAsUser, imageUser(t))
	}

	var budget pdb
	one(t, objs, "PodDisruptionBudget", &budget)
	if budget.Spec.MaxUnavailable != 1 || !selects(budget.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("PodDisruptionBudget: maxUnavailable %d over %v, want 1 over the workers", budget.Spec.MaxUnavailable, budget.Spec.Selector.MatchLabels)
	}
}

// --- PromQL against a real worker ---------------------------------------

var (
	promString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promBrackets = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords = []string{"and", "or", "unless", "bool", "offset", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression selects: its
// identifiers, less strings, label matchers, ranges, grouping labels,
// functions, keywords and the units of durations.
func metricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promBrackets.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.$", rune(s[loc[0]-1])) {
			continue // 10m, 1e3, $var
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") || slices.Contains(promKeywords, strings.ToLower(id)) {
			continue
		}
		if !slices.Contains(names, id) {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`histogram_quantile(0.99, sum by (le, aggregate_type) (rate(decider_decide_duration_seconds_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))`,
			[]string{"decider_decide_duration_seconds_bucket"}},
		{"decider_consumer_lag_records > 1000\n  and deriv(decider_consumer_lag_records[10m]) > 0", []string{"decider_consumer_lag_records"}},
		{`sum by (job) (a unless b offset 10m) and on (job, instance) (up offset 1h == 1) or c{reason!="x"} / ignoring(kind) d`,
			[]string{"a", "b", "up", "c", "d"}},
		{`decider_ready{job=~"$job"}`, []string{"decider_ready"}},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// declared are the metric names processor/metrics.go declares, histograms
// with their _bucket, _sum and _count series: the reference for metrics that
// a worker only exposes after an event this test does not cause.
func declared(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "processor", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	opts := regexp.MustCompile(`prometheus\.(\w+)Opts\{Namespace: ns, Name: "(\w+)"`)
	for _, m := range opts.FindAllStringSubmatch(string(src), -1) {
		name := "decider_" + m[2]
		names[name] = true
		if m[1] == "Histogram" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	for _, m := range regexp.MustCompile(`NewDesc\("(\w+)"`).FindAllStringSubmatch(string(src), -1) {
		names[m[1]] = true
	}
	if len(names) < 30 {
		t.Fatalf("found %d metric names in processor/metrics.go, want its 18 metrics and their histograms' series: did its declarations change form?", len(names))
	}
	return names
}

// worker is a `decider dev` subprocess: an embedded broker and a worker.
type worker struct {
	broker, http string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startWorker runs `decider dev` until the test ends and waits until its
// /readyz answers 200.
func startWorker(t *testing.T) worker {
	t.Helper()
	w := worker{broker: freeAddr(t), http: freeAddr(t)}
	dir := t.TempDir()
	logs, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd := exec.Command(decider, "dev", "--listen", w.broker, "--http", w.http, "--data-dir", filepath.Join(dir, "data"),
		"--partitions", "2", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logs, logs
	logged := func() string { b, _ := os.ReadFile(logs.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("decider dev exited: %v\n%s", err, logged())
		default:
		}
		if code, _ := w.get(t, "/readyz"); code == http.StatusOK {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("decider dev not ready after 30s\n%s", logged())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// get asks the worker's HTTP API for path; code 0 if it did not answer.
func (w worker) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + w.http + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// post sends a command through the worker's HTTP API and checks it is
// accepted.
func (w worker) post(t *testing.T, body string) {
	t.Helper()
	resp, err := http.Post("http://"+w.http+"/v1/account/acc-1/commands", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", body, resp.StatusCode, b)
	}
}

// scrape returns the names of the samples the worker exposes on path.
func (w worker) scrape(t *testing.T, path string) map[string]bool {
	t.Helper()
	code, body := w.get(t, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[line[:strings.IndexAny(line, "{ ")]] = true
	}
	return names
}

// TestAgainstWorker starts a real worker, makes it answer commands (one
// twice, for a dedupe hit) and dead-letter a record without a key, and
// checks the deployment's paths and metric names against it.
func TestAgainstWorker(t *testing.T) {
	readiness, liveness := probePaths(t)
	_, metricsPath, _ := deciderJob(t)
	w := startWorker(t)
	for _, path := range []string{readiness, liveness} {
		if code, body := w.get(t, path); code != http.StatusOK {
			t.Errorf("the Kubernetes probe's GET %s: %d %s, want 200", path, code, body)
		}
	}

	const open = `{"type":"OpenAccount","data":{"owner":"ops"},"commandId":"deploy-test-1"}`
	w.post(t, open)
	w.post(t, open)
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topic := topology.TopicsOf("bank", accounts.Name).Commands
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("no key")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	// The dead letter is counted when its transaction commits.
	var scraped map[string]bool
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		scraped = w.scrape(t, metricsPath)
		if scraped["decider_dead_letters_total"] && scraped["decider_dedupe_hits_total"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter and dedupe hit counted after 15s; exposed: %v", scraped)
		}
	}

	src := declared(t)
	var exprs []string
	for _, r := range readAlerts(t) {
		exprs = append(exprs, r.Expr)
	}
	exprs = append(exprs, dashboardExprs(t)...)
	sourceOnly := map[string]bool{}
	for _, e := range exprs {
		for _, name := range metricNames(e) {
			switch {
			case scraped[name]:
			case name == "up": // Prometheus's own, per target
			case src[name]:
				sourceOnly[name] = true
			default:
				t.Errorf("%s (in %q): neither exposed by a worker nor declared in processor/metrics.go", name, e)
			}
		}
	}
	for name := range sourceOnly {
		t.Logf("%s: not exposed by this worker (no such event yet), declared in processor/metrics.go", name)
	}
}

package deploy_test

import (
	"cmp"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

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

// env is the environment of a worker service's container: the image's,
// then the service's.
func (s composeService) env(t *testing.T) map[string]string {
	t.Helper()
	env := imageEnv(t)
	maps.Copy(env, s.Environment)
	return env
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
		env := w.env(t)
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
		env := w.env(t)
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

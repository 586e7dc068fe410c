package deploy_test

import (
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

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

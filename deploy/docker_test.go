package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

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

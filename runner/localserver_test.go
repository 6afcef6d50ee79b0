package runner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/votr-dev/votr/localpg"
	planpkg "github.com/votr-dev/votr/plan"
)

// TestLocalServerSecretAndLostData: the managed server's generated password
// never reaches votr's output, logs, plan JSON or state file; and a data
// directory deleted outside votr is named in the plan (its databases are
// lost), after which apply makes a new server.
func TestLocalServerSecretAndLostData(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"})
	out := &syncBuffer{}
	r := newRunner(t, stateDir, out)
	t.Cleanup(func() { _, _ = newRunner(t, stateDir, &syncBuffer{}).Destroy(context.Background(), nil) })
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	data := filepath.Join(stateDir, "servers", "default", "data")
	secretOf := func() string {
		b, err := os.ReadFile(filepath.Join(data, "votr.secret"))
		if err != nil || len(strings.TrimSpace(string(b))) < 32 {
			t.Fatalf("managed server's secret: %q, %v", b, err)
		}
		return strings.TrimSpace(string(b))
	}
	secrets := []string{secretOf()}

	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatalf("plan with the data directory deleted: %v\n%s", err, out)
	}
	if len(plan.Actions) == 0 || plan.Actions[0].Kind != planpkg.KindServer || !strings.Contains(plan.Actions[0].Detail, "deleted outside votr: the databases recorded there are lost") {
		t.Errorf("plan does not say the server's data is lost:\n%s", strings.Join(planLines(plan), "\n"))
	}
	planJSON := mustJSON(t, plan)
	if !strings.Contains(planJSON, `"dataLost":true`) {
		t.Errorf("plan JSON lacks dataLost")
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply after the data directory was deleted: %v\n%s", err, out)
	}
	secrets = append(secrets, secretOf())
	state, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		for what, text := range map[string]string{"output and logs": out.String(), "plan JSON": planJSON, "state file": string(state)} {
			if strings.Contains(text, s) {
				t.Errorf("the managed server's password appears in the %s", what)
			}
		}
	}
}

// TestLocalServerHalfMade: what an interrupted creation or an older votr
// leaves (a cluster whose postgresql.conf lacks votr's settings, a leftover
// data.new) does not stop plan, apply or destroy, and destroy leaves no
// process behind.
func TestLocalServerHalfMade(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dir := serverDir(t)
	stateDir := filepath.Join(dir, "state")
	srvDir := filepath.Join(stateDir, "servers", "default")
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"})
	out := &syncBuffer{}
	r := newRunner(t, stateDir, out)
	t.Cleanup(func() { _ = localpg.New(localpg.Options{Dir: srvDir}).Destroy(context.Background()) })
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	srv := localpg.New(localpg.Options{Dir: srvDir})
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Created by an older votr that was killed before it added the include.
	conf := filepath.Join(srvDir, "data", "postgresql.conf")
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(string(b), "include 'votr.conf'", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Plan(ctx, topo); err != nil {
		t.Fatalf("plan over a cluster without votr's settings: %v\n%s", err, out)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply over a cluster without votr's settings: %v\n%s", err, out)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	if pids := srv.Processes(); len(pids) > 0 || srv.Exists() {
		t.Fatalf("destroy left processes %v (or the data: %v)", pids, srv.Exists())
	}

	// A creation killed before its cluster was moved into place.
	if err := os.MkdirAll(filepath.Join(srvDir, "data.new", "base"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srvDir, "data.new", "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply over a half-made cluster: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(srvDir, "data.new")); !os.IsNotExist(err) {
		t.Errorf("data.new still there: %v", err)
	}
	if _, err := newRunner(t, stateDir, out).Destroy(ctx, nil); err != nil {
		t.Fatalf("destroy: %v\n%s", err, out)
	}
	if pids := srv.Processes(); len(pids) > 0 {
		t.Fatalf("destroy left processes %v", pids)
	}
}

package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// sample is a fixed sequence of what an agent reports in a day.
func sample() *Metrics {
	m := New("0.1.0", "go1.26")
	m.Polled("ok", t0, 7)
	m.SetPatch("6.1.0-56-amd64", "klp_cmdline_2", 2, "soaking")
	m.Applied(true, 1500*time.Millisecond)
	m.Applied(false, 0)
	m.HealthEvent("oops", "kmsg", true, "klp_cmdline_2")
	m.HealthEvent("warning", "taint", false, "klp_cmdline_2")
	m.RolledBack("health")
	m.RolledBack("cosmic rays")
	m.SetPatch("6.1.0-56-amd64", "klp_cmdline_1", 1, "good")
	m.SetBlocked(1)
	m.Polled("error", t0.Add(time.Minute), 0)
	return m
}

func TestTextfileGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "klp-agent.prom")
	if err := sample().WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "metrics.golden.prom")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 creates it)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("textfile differs from %s:\n%s", golden, got)
	}
	// Atomic replacement leaves nothing else in the directory.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries after the write", len(ents))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v: node_exporter must read it", fi.Mode())
	}
}

func TestMetricSemantics(t *testing.T) {
	m := sample()
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"unknown rollback reason counts as other", testutil.ToFloat64(m.rollbacks.WithLabelValues("other")), 1},
		{"the previous patch series is gone", float64(testutil.CollectAndCount(m.patchInfo)), 1},
		{"crash budget counts the oops", testutil.ToFloat64(m.crashes.WithLabelValues("klp_cmdline_2")), 1},
		{"a warning is not a crash", float64(testutil.CollectAndCount(m.crashes)), 1},
		{"a failed poll keeps the last good one", testutil.ToFloat64(m.lastOK), float64(t0.Unix())},
		{"and the manifest version", testutil.ToFloat64(m.manifestVer), 7},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %+v", err, problems)
	}
}

func TestServe(t *testing.T) {
	m := sample()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := m.Serve(ctx, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="1",patch="klp_cmdline_1",state="good"} 1`) {
		t.Fatalf("served:\n%s", b)
	}
	for _, a := range []string{"0.0.0.0:9797", "10.1.2.3:9797", ":9797", "[::]:9797"} {
		if _, err := m.Serve(ctx, a, nil); !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: %v, want ErrNotLoopback", a, err)
		}
	}
	cancel()
	time.Sleep(50 * time.Millisecond)
	if _, err := http.Get("http://" + addr.String() + "/metrics"); err == nil {
		t.Fatal("listener still serves after ctx ended")
	}
}

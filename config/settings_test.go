package config

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestLoadSettings(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want Settings
		err  string
	}{
		{env: map[string]string{}, want: Settings{StateDir: ".votr", LogFormat: "text", LogLevel: "info"}},
		{env: map[string]string{"LOG_LEVEL": "debug", "STATE_DIR": "/elsewhere"},
			want: Settings{StateDir: ".votr", LogFormat: "text", LogLevel: "info"}},
		{env: map[string]string{"VOTR_STATE_DIR": "/tmp/s", "VOTR_LOG_FORMAT": "json", "VOTR_LOG_LEVEL": "debug",
			"VOTR_METRICS_ADDR": "127.0.0.1:9187", "VOTR_PG_BIN": "/usr/lib/postgresql/15/bin"},
			want: Settings{StateDir: "/tmp/s", LogFormat: "json", LogLevel: "debug", MetricsAddr: "127.0.0.1:9187", PGBin: "/usr/lib/postgresql/15/bin"}},
		{env: map[string]string{"VOTR_LOG_FORMAT": "xml"}, err: `VOTR_LOG_FORMAT (--log-format) is "xml"; use text or json`},
		{env: map[string]string{"VOTR_LOG_LEVEL": "verbose"}, err: `VOTR_LOG_LEVEL (--log-level) is "verbose"; use debug, info, warn or error`},
		{env: map[string]string{"VOTR_METRICS_ADDR": "9187"}, err: "VOTR_METRICS_ADDR (--metrics-addr) is \"9187\"; use HOST:PORT"},
		{env: map[string]string{"VOTR_STATE_DIR": " "}, err: "VOTR_STATE_DIR (--state-dir) is empty"},
		{env: map[string]string{"VOTR_STATE_DIR": "", "VOTR_LOG_LEVEL": ""},
			want: Settings{StateDir: ".votr", LogFormat: "text", LogLevel: "info"}},
	}
	for _, c := range cases {
		for _, k := range []string{"VOTR_STATE_DIR", "VOTR_LOG_FORMAT", "VOTR_LOG_LEVEL", "VOTR_METRICS_ADDR", "VOTR_PG_BIN", "LOG_LEVEL", "STATE_DIR"} {
			if v, ok := c.env[k]; ok {
				t.Setenv(k, v)
			} else {
				unsetenv(t, k)
			}
		}
		got, err := LoadSettings()
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%v: want error %q, got %v", c.env, c.err, err)
		case c.err == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.err == "" && got != c.want:
			t.Errorf("%v: got %+v, want %+v", c.env, got, c.want)
		}
	}
}

func TestSettingsLogger(t *testing.T) {
	var buf bytes.Buffer
	log := Settings{LogFormat: "json", LogLevel: "warn"}.Logger(&buf)
	log.Info("hidden")
	log.Warn("shown", "feed", "1:0")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["feed"] != "1:0" || rec["level"] != "WARN" {
		t.Errorf("record %v", rec)
	}
	buf.Reset()
	Settings{LogFormat: "text", LogLevel: "debug"}.Logger(&buf).Debug("hello", "n", 1)
	if !strings.Contains(buf.String(), "level=DEBUG msg=hello n=1") {
		t.Errorf("text log %q", buf.String())
	}
}

// unsetenv removes a variable for the rest of the test (t.Setenv only sets).
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "") // registers the restore at cleanup
	if err := os.Unsetenv(k); err != nil {
		t.Fatal(err)
	}
}

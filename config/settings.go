package config

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/kelseyhightower/envconfig"
)

// Settings are the process settings that are not part of a topology. They
// come from VOTR_* environment variables; the command line may override them
// (and should call Validate again afterwards).
type Settings struct {
	// StateDir holds managed local servers and the state of the last apply
	// (VOTR_STATE_DIR, default .votr).
	StateDir string `split_words:"true" default:".votr"`
	// LogFormat is text or json (VOTR_LOG_FORMAT, default text).
	LogFormat string `split_words:"true" default:"text"`
	// LogLevel is debug, info, warn or error (VOTR_LOG_LEVEL, default info).
	LogLevel string `split_words:"true" default:"info"`
	// MetricsAddr is where Prometheus metrics are served, e.g. 127.0.0.1:9187
	// (VOTR_METRICS_ADDR; empty = no metrics endpoint).
	MetricsAddr string `split_words:"true"`
	// UIAddr is where apply and check serve the live web view, e.g.
	// 127.0.0.1:8080 (VOTR_UI_ADDR; empty = no web view). Loopback unless
	// an interface is named by its IP address (see package ui).
	UIAddr string `split_words:"true"`
	// PGBin is the directory of the PostgreSQL server binaries
	// (VOTR_PG_BIN; empty = find them on PATH or under /usr/lib/postgresql).
	PGBin string `split_words:"true"`
}

// split_words (and no envconfig:"..." tag) keeps envconfig from falling back
// to unprefixed variables such as LOG_LEVEL that belong to other programs.

// LoadSettings reads the VOTR_* variables, applies the defaults and validates them.
func LoadSettings() (Settings, error) {
	var s Settings
	if err := envconfig.Process("votr", &s); err != nil {
		return Settings{}, fmt.Errorf("settings: %w", err)
	}
	// envconfig applies defaults only to unset variables; `export VOTR_LOG_LEVEL=`
	// means "no preference" too.
	for _, f := range []struct {
		v   *string
		def string
	}{
		{&s.StateDir, ".votr"}, {&s.LogFormat, "text"}, {&s.LogLevel, "info"},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	if err := s.Validate(); err != nil {
		return Settings{}, err
	}
	return s, nil
}

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
}

// Validate reports every bad setting, naming its variable and the fix.
func (s Settings) Validate() error {
	var problems []string
	if strings.TrimSpace(s.StateDir) == "" {
		problems = append(problems, "VOTR_STATE_DIR (--state-dir) is empty; give a directory, or unset it to use .votr")
	}
	if s.LogFormat != "text" && s.LogFormat != "json" {
		problems = append(problems, fmt.Sprintf("VOTR_LOG_FORMAT (--log-format) is %q; use text or json", s.LogFormat))
	}
	if _, ok := logLevels[s.LogLevel]; !ok {
		problems = append(problems, fmt.Sprintf("VOTR_LOG_LEVEL (--log-level) is %q; use debug, info, warn or error", s.LogLevel))
	}
	if s.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(s.MetricsAddr); err != nil || port == "" {
			problems = append(problems, fmt.Sprintf("VOTR_METRICS_ADDR (--metrics-addr) is %q; use HOST:PORT like 127.0.0.1:9187, or leave it empty for no metrics", s.MetricsAddr))
		}
	}
	if s.UIAddr != "" {
		if _, port, err := net.SplitHostPort(s.UIAddr); err != nil || port == "" {
			problems = append(problems, fmt.Sprintf("VOTR_UI_ADDR (--ui) is %q; use HOST:PORT like 127.0.0.1:8080, or leave it empty for no web view", s.UIAddr))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("settings: %s", strings.Join(problems, "\n"))
	}
	return nil
}

// Logger returns a logger writing to w in the configured format, at the
// configured level (info if the level is not valid).
func (s Settings) Logger(w io.Writer) *slog.Logger {
	level, ok := logLevels[s.LogLevel]
	if !ok {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

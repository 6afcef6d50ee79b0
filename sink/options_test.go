package sink

import (
	"strings"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		set  func(*Options)
		want string // "" = valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"no retries", func(o *Options) { o.Retries = 0 }, ""},
		{"stop", func(o *Options) { o.OnScriptError = StopFeed }, ""},
		{"zero batchTxns", func(o *Options) { o.BatchTxns = 0 }, "batchTxns is 0"},
		{"zero batchRows", func(o *Options) { o.BatchRows = 0 }, "batchRows is 0"},
		{"smallest batchBytes", func(o *Options) { o.BatchBytes = MinBatchBytes }, ""},
		{"largest batchBytes", func(o *Options) { o.BatchBytes = MaxBatchBytes }, ""},
		{"zero batchBytes", func(o *Options) { o.BatchBytes = 0 }, "batchBytes is 0"},
		{"tiny batchBytes", func(o *Options) { o.BatchBytes = MinBatchBytes - 1 }, "batchBytes is 65535"},
		{"huge batchBytes", func(o *Options) { o.BatchBytes = MaxBatchBytes + 1 }, "batchBytes is 1073741825"},
		{"zero mergeTimeout", func(o *Options) { o.MergeTimeout = 0 }, "mergeTimeout is 0s"},
		{"negative retries", func(o *Options) { o.Retries = -1 }, "retries is -1"},
		{"no onScriptError", func(o *Options) { o.OnScriptError = "" }, `onScriptError is ""`},
		{"zero slotWarnBytes", func(o *Options) { o.SlotWarnBytes = 0 }, "slotWarnBytes is 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := DefaultOptions()
			c.set(&o)
			err := o.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// New uses the options as given: the zero value is refused rather than
// quietly filled in with defaults of its own.
func TestNewRefusesZeroOptions(t *testing.T) {
	cfg := Config{SourceID: 1, TargetID: 0, SourceDB: "votr_1", TargetDB: "votr_0", SourceDSN: "postgres://src", TargetDSN: "postgres://dst"}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "batchTxns is 0") {
		t.Errorf("New with zero options = %v, want the options refused", err)
	}
	cfg.Options = DefaultOptions()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New with default options: %v", err)
	}
	if s.opts.MergeTimeout != 5*time.Second {
		t.Errorf("merge timeout %s, want the default 5s", s.opts.MergeTimeout)
	}
}

package main

import (
	"strings"
	"testing"
)

func TestLayoutFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    layout
		where   string
		wantErr string
	}{
		{"one-server", oneServer, "all on one server", ""},
		{"per-region", perRegion, "each region on its own server", ""},
		{"per_region", "", "", `unknown layout "per_region": use one-server or per-region`},
		{"", "", "", `unknown layout ""`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var l layout
			err := l.Set(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Set(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%q): %v", tc.in, err)
			}
			if l != tc.want || l.where() != tc.where || l.String() != tc.in {
				t.Errorf("Set(%q): layout %q, where %q, String %q; want %q, %q, %q", tc.in, l, l.where(), l.String(), tc.want, tc.where, tc.in)
			}
		})
	}
}

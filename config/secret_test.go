package config

import (
	"errors"
	"testing"
)

func TestPassword(t *testing.T) {
	tests := []struct{ connect, want string }{
		{"postgresql://app:s3cret@db:5432/?sslmode=require", "s3cret"},
		{"postgresql://app@db/?password=p%40ss", "p@ss"},
		{"postgresql://app@db/", ""},
		{"local", ""},
	}
	for _, tt := range tests {
		if got := Password(tt.connect); got != tt.want {
			t.Errorf("Password(%q) = %q, want %q", tt.connect, got, tt.want)
		}
	}
}

func TestScrubError(t *testing.T) {
	const dsn = "postgresql://app:p%40ss%20w@db/votr_1" // password "p@ss w"
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want string
		same bool // the error itself comes back, its chain intact
	}{
		{"no password in the message", base, "boom", true},
		{"password as typed", errors.New("bad p@ss w here"), "bad xxxxx here", false},
		{"password percent-encoded", errors.New("url app:p%40ss+w@db"), "url app:xxxxx@db", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ScrubError(tt.err, dsn)
			if got.Error() != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if (got == tt.err) != tt.same {
				t.Errorf("returned the same error: %v, want %v", got == tt.err, tt.same)
			}
		})
	}
}

func TestWithoutPassword(t *testing.T) {
	tests := []struct{ connect, want string }{
		{"postgresql://app:xxxxx@db:5432/?sslmode=require", "postgresql://app@db:5432/?sslmode=require"},
		{"postgresql://app@db/?password=xxxxx&sslmode=disable", "postgresql://app@db/?sslmode=disable"},
		{"local:east", "local:east"},
	}
	for _, tt := range tests {
		if got := WithoutPassword(tt.connect); got != tt.want {
			t.Errorf("WithoutPassword(%q) = %q, want %q", tt.connect, got, tt.want)
		}
	}
}

package suggest

import "testing"

func TestClosest(t *testing.T) {
	commands := []string{"plan", "apply", "destroy", "check", "sink", "replay", "version", "help"}
	tests := []struct{ word, want string }{
		{"aply", "apply"},
		{"destory", "destroy"},
		{"chekc", "check"},
		{"Plan", "plan"},
		{"deploy", "replay"}, // two edits: close enough to ask
		{"remove", ""},
		{"x", ""},
	}
	for _, tt := range tests {
		if got := Closest(tt.word, commands); got != tt.want {
			t.Errorf("Closest(%q) = %q, want %q", tt.word, got, tt.want)
		}
	}
}

func TestDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"wokers", "workers", 1}, {"ab", "ba", 2}}
	for _, tt := range tests {
		if got := distance(tt.a, tt.b); got != tt.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

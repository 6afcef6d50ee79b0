// Package suggest finds the word a user probably meant: the known word
// closest to a misspelled one, for "did you mean" hints on topology keys,
// table names and command names alike.
package suggest

import "strings"

// Closest returns the known word closest to a misspelled one, ignoring case,
// '_' and '-', or "" when none is close enough to be a plausible typo.
func Closest(key string, known []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	best, bestDist := "", 1<<30
	for _, k := range known {
		d := distance(norm(key), norm(k))
		if d < bestDist {
			best, bestDist = k, d
		}
	}
	// Allow about one edit per three letters, at least two: "wokers" and
	// "drain_delay" are typos, "colour" for "script" is not.
	limit := max(2, len(key)/3)
	if bestDist <= limit {
		return best
	}
	return ""
}

// distance is the Levenshtein edit distance between a and b (by bytes).
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

package plan

import (
	"regexp"
	"sort"
	"strconv"
)

// slotName matches the slots votr names with schema.Slot: <srcdb>_to_<id>.
var slotName = regexp.MustCompile(`^(.+)_to_([0-9]+)$`)

// originName matches schema.Origin: <dstdb>_from_<id>.
var originName = regexp.MustCompile(`^(.+)_from_([0-9]+)$`)

// parseName splits a slot or origin name into its database and region id.
func parseName(re *regexp.Regexp, name string) (db string, id int, ok bool) {
	m := re.FindStringSubmatch(name)
	if m == nil {
		return "", 0, false
	}
	id, err := strconv.Atoi(m[2])
	if err != nil {
		return "", 0, false
	}
	return m[1], id, true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

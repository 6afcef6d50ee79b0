package config

import (
	"regexp"
	"strings"
)

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandProblem is one bad ${...} reference, at a byte offset in the value.
type expandProblem struct {
	offset int
	msg    string
}

// expand replaces every ${NAME} in s with the variable's value.
//
// Rules (documented in docs/topology.md):
//   - $${ is a literal ${ (so a value can contain ${ without expansion);
//   - a $ not followed by { is literal;
//   - values are not expanded again, so a password containing ${ is safe;
//   - an unset variable is an error; a variable set to "" expands to "".
func expand(s string, env func(string) (string, bool)) (string, []expandProblem) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	var problems []expandProblem
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				problems = append(problems, expandProblem{i, "a ${ is not closed; end the variable name with }, or write $${ for a literal ${"})
				return s, problems
			}
			name := s[i+2 : i+2+end]
			switch val, ok := lookup(env, name); {
			case !varName.MatchString(name):
				// The name is not echoed: a mistyped URL could put part of a
				// password between the braces.
				problems = append(problems, expandProblem{i, "a ${...} reference has an invalid variable name; names are letters, digits and _, not starting with a digit (write $${ for a literal ${)"})
			case !ok:
				problems = append(problems, expandProblem{i, "environment variable " + name + " is not set; export " + name + " before running votr, or remove ${" + name + "} from the file"})
			default:
				b.WriteString(val)
			}
			i += 2 + end + 1
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), problems
}

func lookup(env func(string) (string, bool), name string) (string, bool) {
	if env == nil || !varName.MatchString(name) {
		return "", false
	}
	return env(name)
}

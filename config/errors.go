package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a topology file, at a position in it.
// Msg says what is wrong and how to fix it; it never contains a password.
type Error struct {
	File      string
	Line, Col int // 1-based; 0 when the problem is not at a position (file unreadable)
	Msg       string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Errors is every problem found in one topology file, in file order. Load
// returns all of them at once so that a user fixes the file in one pass.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find the individual *Error values.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// AsErrors returns the topology errors inside err, or nil if it has none.
func AsErrors(err error) Errors {
	var es Errors
	if errors.As(err, &es) {
		return es
	}
	var e *Error
	if errors.As(err, &e) {
		return Errors{e}
	}
	return nil
}

func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Col < es[j].Col
	})
	return es
}

// Pos is a position in the topology file (1-based line and column).
type Pos struct{ Line, Col int }

// Errorf makes an error at a position of this topology's file, for problems
// found later (e.g. by the runner inspecting a region's database), so that
// they point at the region in the file like validation errors do.
func (t *Topology) Errorf(p Pos, format string, args ...any) *Error {
	return &Error{File: t.Path, Line: p.Line, Col: p.Col, Msg: fmt.Sprintf(format, args...)}
}

// Package script compiles a votr merge script (TypeScript) with esbuild and
// runs it in a goja sandbox: no file system, network or process access, and a
// deadline on every call. A Host is one JavaScript runtime; it is not safe for
// concurrent use, so every sink owns its own.
package script

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/evanw/esbuild/pkg/api"
)

// Program is a compiled script, ready to be loaded into any number of Hosts.
type Program struct {
	Path string // the TypeScript source it was compiled from
	JS   string // CommonJS output of esbuild
}

// CompileError is a script that does not compile, at a position in its source.
type CompileError struct {
	File      string
	Line, Col int // 1-based
	Msg       string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Compile reads and compiles the TypeScript file at path. A missing file or
// a syntax error is returned as an error naming the file (and, for syntax
// errors, a *CompileError with its line and column).
func Compile(path string) (*Program, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("script %s: %w", path, err)
	}
	res := api.Transform(string(src), api.TransformOptions{
		Loader:     api.LoaderTS,
		Format:     api.FormatCommonJS,
		Target:     api.ES2017,
		Sourcefile: path,
		// An inline source map lets goja report thrown errors at their
		// TypeScript line and column rather than in esbuild's output.
		Sourcemap:      api.SourceMapInline,
		SourcesContent: api.SourcesContentExclude,
	})
	if len(res.Errors) > 0 {
		m := res.Errors[0]
		ce := &CompileError{File: path, Msg: m.Text}
		if m.Location != nil {
			ce.Line, ce.Col = m.Location.Line, m.Location.Column+1
		}
		if len(res.Errors) > 1 {
			ce.Msg += fmt.Sprintf(" (and %d more errors)", len(res.Errors)-1)
		}
		return nil, ce
	}
	return &Program{Path: path, JS: strings.TrimSpace(string(res.Code))}, nil
}

// Row is one table row as the script sees it, by column name. Values are
// string (text, uuid, timestamps, numerics), int64 (integer columns), float64,
// bool, nil (NULL) or, for json/jsonb columns, the decoded JSON value
// (map[string]any, []any, float64, ...).
type Row map[string]any

// Meta tells a merge where a change comes from.
type Meta struct {
	Source     int       `json:"source"` // region the feed reads from
	Target     int       `json:"target"` // region being written
	Table      string    `json:"table"`
	LSN        string    `json:"lsn"` // source commit position, e.g. "0/16B3748"
	CommitTime time.Time `json:"commitTime"`
}

// Op is one conflicting change handed to a table's merge function.
// Before is nil for an insert; Proposed is nil for a delete; Target is nil
// when the target has no row with that key. Deleted is the key's tombstone
// (the merged image of the rows deleted there), given for a delete and for
// a change whose target row is absent; nil when there is none.
type Op struct {
	Before   Row
	Proposed Row
	Target   Row
	Deleted  Row
	Meta     Meta
}

// Action is what a merge decided.
type Action int

const (
	Apply      Action = iota // write Result.Row (which may equal the target: then nothing is written)
	Drop                     // discard the change
	DeadLetter               // park the change in votr.dead_letters with Result.Reason
	Delete                   // delete the target row
)

// Result is a merge function's answer.
type Result struct {
	Action Action
	Row    Row    // for Apply
	Reason string // for DeadLetter
	// Tombstone, when set, becomes the key's tombstone: the image later
	// changes are judged by while the key has no row. With Delete and no
	// Tombstone, the sink records the deleted image.
	Tombstone Row
}

// TableConfig is how the script configures one table.
type TableConfig struct {
	// HasMerge is true when the script exports a merge function for the table.
	HasMerge bool
	// VersionColumn, when set and there is no merge, makes conflicts
	// last-one-wins on that column.
	VersionColumn string
}

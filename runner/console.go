package runner

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// Console is a terminal showing a block of live status lines at its bottom.
// Everything else written through it (plans, logs, the report) appears above
// the block, which is redrawn underneath. Use it as the writer of both the
// logger and Options.Out so the two never overwrite each other.
type Console struct {
	mu     sync.Mutex
	w      io.Writer
	width  func() int // terminal columns; lines are cut to fit so they never wrap
	status []string   // lines currently shown at the bottom
}

// NewConsole draws on w; width reports the terminal's width (nil or a
// result ≤ 0: 120 columns).
func NewConsole(w io.Writer, width func() int) *Console {
	return &Console{w: w, width: width}
}

// Write prints p above the status block.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.status) == 0 {
		return c.w.Write(p)
	}
	var b strings.Builder
	c.erase(&b)
	b.Write(p)
	if len(p) > 0 && p[len(p)-1] != '\n' {
		b.WriteByte('\n')
	}
	c.draw(&b)
	if _, err := io.WriteString(c.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Show replaces the status block with lines.
func (c *Console) Show(lines []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	c.erase(&b)
	c.status = c.fit(lines)
	c.draw(&b)
	io.WriteString(c.w, b.String())
}

// Keep leaves the current block on screen as ordinary output: later writes
// go below it.
func (c *Console) Keep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = nil
}

// erase moves to the first status line and clears to the end of the screen.
func (c *Console) erase(b *strings.Builder) {
	if n := len(c.status); n > 0 {
		fmt.Fprintf(b, "\x1b[%dA\r\x1b[J", n)
	}
}

func (c *Console) draw(b *strings.Builder) {
	for _, l := range c.status {
		b.WriteString(l)
		b.WriteByte('\n')
	}
}

func (c *Console) fit(lines []string) []string {
	width := 120
	if c.width != nil {
		if w := c.width(); w > 0 {
			width = w
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if utf8.RuneCountInString(l) >= width {
			r := []rune(l)
			l = string(r[:width-1])
		}
		out[i] = l
	}
	return out
}

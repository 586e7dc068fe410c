package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// progress shows how far a long command is, in steps: on a terminal a bar
// redrawn in place, elsewhere (a pipe, a file, a log) a line per step.
type progress struct {
	w           io.Writer
	tty         bool
	label       string
	done, total int
}

// newProgress returns the progress of total steps, written to w.
func newProgress(w io.Writer, label string, total int) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && term.IsTerminal(int(f.Fd())), label: label, total: total}
}

// step counts a step done; line says what it did (printed when w is not a
// terminal).
func (p *progress) step(line string) {
	p.done++
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	p.draw("")
}

// detail redraws the bar with what the current step is doing; nothing when
// w is not a terminal.
func (p *progress) detail(what string) {
	if p.tty {
		p.draw(what)
	}
}

func (p *progress) draw(what string) {
	const width = 30
	n := width * p.done / max(p.total, 1)
	fmt.Fprintf(p.w, "\r\033[K%s [%s%s] %d/%d %s", p.label, strings.Repeat("#", n), strings.Repeat(" ", width-n), p.done, p.total, what)
}

// end finishes the bar's line.
func (p *progress) end() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

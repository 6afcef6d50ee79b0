package report

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints the report as two aligned tables (regions, then feeds)
// and a verdict: "converged: all N regions identical", or the problems.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tBALLOTS\tSUM(TOTALS)\tINVARIANT\tBALLOTS DIGEST\tTOTALS DIGEST\tCANDIDATES DIGEST\tBALLOTS BY SRC\tMATCHES HUB")
	for _, reg := range r.Regions {
		if reg.Err != "" {
			fmt.Fprintf(tw, "%s\tunreachable: %s\t\t\t\t\t\t\t\n", reg.Label, oneLine(reg.Err))
			continue
		}
		inv := "ok"
		if n := len(reg.Violations); n > 0 {
			inv = fmt.Sprintf("%d VIOLATED", n)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", reg.Label, reg.Ballots, reg.TotalsSum, inv,
			short(reg.BallotsDigest), short(reg.TotalsDigest), short(reg.CandidatesDigest), bySrc(reg.BySrc), r.matchText(reg))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Feeds) > 0 {
		fmt.Fprintln(w)
		// LAG is what the feed has not applied yet (0 once caught up);
		// SLOT RETAINS is the WAL its slot keeps on the source's server,
		// which on a shared server includes other databases' WAL.
		fmt.Fprintln(tw, "FEED\tAPPLIED LSN\tLAST SOURCE COMMIT\tLAG\tTXNS\tROWS\tCONFLICTS\tDEAD LETTERS\tSLOT RETAINS\tSLOT")
		for _, f := range r.Feeds {
			lsn, commit, txns, rows, conflicts := "-", "-", "0", "0", "0"
			if c := f.Checkpoint; c != nil {
				lsn = c.SourceLSN
				if c.SourceCommit != nil {
					commit = c.SourceCommit.UTC().Format(time.DateTime)
				}
				txns, rows, conflicts = fmt.Sprint(c.Txns), fmt.Sprint(c.Rows), fmt.Sprint(c.Conflicts)
			}
			if f.TargetErr != "" {
				lsn = "target unreachable"
			}
			retains := "-"
			if f.RetainedBytes >= 0 {
				retains = byteSize(f.RetainedBytes)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d pending\t%s\t%s\n",
				f.Name, lsn, commit, lagText(f), txns, rows, conflicts, f.PendingDeadLetters, retains, slotText(f))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	ps := r.Problems()
	if len(ps) == 0 {
		_, err := fmt.Fprintf(w, "converged: all %d regions identical\n", len(r.Regions))
		return err
	}
	fmt.Fprintf(w, "NOT converged: %d problem(s):\n", len(ps))
	for _, p := range ps {
		if _, err := fmt.Fprintf(w, "  - %s\n", p); err != nil {
			return err
		}
	}
	return nil
}

func (r *Report) matchText(reg RegionReport) string {
	if reg.ID == r.HubID {
		return "(hub)"
	}
	if hub, ok := r.Region(r.HubID); !ok || hub.Err != "" {
		return "unknown"
	}
	if reg.Match.all() {
		return "yes"
	}
	var differ []string
	if !reg.Match.Ballots || !reg.Match.BySrc {
		differ = append(differ, "ballots")
	}
	if !reg.Match.Totals {
		differ = append(differ, "totals")
	}
	if !reg.Match.Candidates {
		differ = append(differ, "candidates")
	}
	return "NO: " + strings.Join(differ, ",")
}

func slotText(f FeedReport) string {
	switch {
	case f.SourceErr != "":
		return "source unreachable"
	case !f.SlotExists:
		return "MISSING"
	}
	state := "inactive"
	if f.SlotActive {
		state = "active"
	}
	return state + ", " + f.WALStatus
}

// short abbreviates a digest for the table; JSON has it in full.
func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func bySrc(m map[int]int64) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%d:%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// jsonReport is the report with its verdict, as WriteJSON prints it.
type jsonReport struct {
	*Report
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"`
}

// WriteJSON prints the report as one indented JSON object, with "ok" and
// "problems" added.
func (r *Report) WriteJSON(w io.Writer) error {
	ps := r.Problems()
	if ps == nil {
		ps = []string{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(jsonReport{Report: r, OK: len(ps) == 0, Problems: ps})
}

package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The pictures BENCHMARKS.md embeds, drawn by the bench from the run's
// own figures (docs/bench/*.png by default, -plots): the lag distribution
// at the original pace and the scaling curve.

// lagSeries is one curve of the lag picture.
type lagSeries struct {
	label  string
	lags   dist
	dashed bool
}

// minLagMs keeps every lag on the picture's logarithmic axis (a lag can
// round to 0 on a coarse clock).
const minLagMs = 0.1

// The logarithmic axes are drawn as linear axes of the logarithm, with
// ticks labelled in the original unit: gonum/plot's LogScale centres an
// axis label by the arithmetic mean of the range and then pads the plot
// for a label where none is drawn.

// cdfPoints are the empirical distribution of d: lag in ms (ascending)
// against the percentage of lags at most that large.
func cdfPoints(d dist) plotter.XYs {
	s := slices.Clone(d)
	slices.Sort(s)
	out := make(plotter.XYs, len(s))
	for i, v := range s {
		out[i].X = math.Max(minLagMs, float64(v)/float64(time.Millisecond))
		out[i].Y = 100 * float64(i+1) / float64(len(s))
	}
	return out
}

// log10X maps the X of every point to its decimal logarithm.
func log10X(xys plotter.XYs) plotter.XYs {
	out := slices.Clone(xys)
	for i := range out {
		out[i].X = math.Log10(out[i].X)
	}
	return out
}

// msTicks are tick marks at 1-2-5 steps of milliseconds covering [lo, hi]
// (values in ms; a tick's Value is in ms, see log10Ticks).
func msTicks(lo, hi float64) plot.ConstantTicks {
	var ts plot.ConstantTicks
	for decade := 0.1; decade <= hi*10; decade *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := m * decade
			if v < lo/1.0001 || v > hi*1.0001 {
				continue
			}
			ts = append(ts, plot.Tick{Value: v, Label: msLabel(v)})
		}
	}
	return ts
}

// log10Ticks places ticks on an axis of decimal logarithms.
func log10Ticks(ts plot.ConstantTicks) plot.ConstantTicks {
	out := slices.Clone(ts)
	for i := range out {
		out[i].Value = math.Log10(out[i].Value)
	}
	return out
}

func msLabel(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%gs", v/1000)
	default:
		return fmt.Sprintf("%gms", v)
	}
}

// palette: distinguishable in colour and in grey.
var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x5f, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x5f, B: 0x00, A: 0xff},
	color.RGBA{R: 0x2c, G: 0x8c, B: 0x3c, A: 0xff},
	color.RGBA{R: 0x80, G: 0x30, B: 0x90, A: 0xff},
}

var guideColor = color.Gray{Y: 0x90}

// plotLagCDF draws the distribution of each series' lags (a CDF on a
// logarithmic lag axis, so both the median and the tail can be read) with
// guides at the 95th and 99th percentiles.
func plotLagCDF(path, title string, series []lagSeries) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "lag: commit on the spoke → commit there (logarithmic)"
	p.Y.Label.Text = "% of probes with at most this lag"
	p.Y.Min, p.Y.Max = 0, 100
	p.Y.Tick.Marker = plot.ConstantTicks{{Value: 0, Label: "0"}, {Value: 25, Label: "25"}, {Value: 50, Label: "50"},
		{Value: 75, Label: "75"}, {Value: 95, Label: "95"}, {Value: 99, Label: "99"}, {Value: 100, Label: ""}}
	p.Add(plotter.NewGrid())
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, s := range series {
		if len(s.lags) == 0 {
			continue
		}
		pts := cdfPoints(s.lags)
		lo, hi = math.Min(lo, pts[0].X), math.Max(hi, pts[len(pts)-1].X)
		l, err := plotter.NewLine(log10X(pts))
		if err != nil {
			return fmt.Errorf("%s: %w", s.label, err)
		}
		l.Color = palette[i%len(palette)]
		l.Width = vg.Points(1.5)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (n=%d, p95 %s ms, p99 %s ms)", s.label, len(s.lags), msec(s.lags.pct(95)), msec(s.lags.pct(99))), l)
	}
	if math.IsInf(lo, 1) {
		return fmt.Errorf("no lags to draw")
	}
	// Whole 1-2-5 steps around the data, so that the ends have labels.
	lo, hi = niceFloor(lo), niceCeil(hi)
	p.X.Min, p.X.Max = math.Log10(lo), math.Log10(hi)
	p.X.Tick.Marker = log10Ticks(msTicks(lo, hi))
	for _, pc := range []float64{95, 99} {
		g, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: pc}, {X: p.X.Max, Y: pc}})
		if err != nil {
			return err
		}
		g.Color, g.Dashes = guideColor, []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(g)
	}
	// Bottom right is empty: every curve has risen before its tail.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.YOffs = vg.Points(10)
	p.Legend.XOffs = -vg.Points(6)
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	return savePlots(path, 18*vg.Centimeter, 11*vg.Centimeter, p)
}

// niceFloor and niceCeil round to the 1-2-5 steps of msTicks.
func niceFloor(v float64) float64 {
	v = math.Max(v, minLagMs)
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{5, 2, 1} {
		if m*d <= v*1.0001 {
			return m * d
		}
	}
	return d
}

func niceCeil(v float64) float64 {
	v = math.Max(v, minLagMs)
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*d >= v/1.0001 {
			return m * d
		}
	}
	return 10 * d
}

// scalePoint is one spoke count's sustained pace.
type scalePoint struct {
	spokes   int
	ballots  float64 // ballots per second sustained
	converge time.Duration
}

// plotScaling draws the scaling curve: sustained ballots/s above, the
// convergence after the last write (at that pace) below, against the
// number of spokes on a doubling axis.
func plotScaling(path, title string, pts []scalePoint) error {
	if len(pts) == 0 {
		return fmt.Errorf("no spoke count sustained a pace: nothing to draw")
	}
	var tp, cp plotter.XYs
	var ticks plot.ConstantTicks
	maxB, maxC := 0.0, 0.0
	for _, x := range pts {
		sx := math.Log2(float64(x.spokes)) // doubling axis
		tp = append(tp, plotter.XY{X: sx, Y: x.ballots})
		c := float64(x.converge) / float64(time.Millisecond)
		cp = append(cp, plotter.XY{X: sx, Y: c})
		ticks = append(ticks, plot.Tick{Value: sx, Label: fmt.Sprint(x.spokes)})
		maxB, maxC = math.Max(maxB, x.ballots), math.Max(maxC, c)
	}
	xmin, xmax := tp[0].X-0.4, tp[len(tp)-1].X+0.4

	top := plot.New()
	top.Title.Text = title
	top.Y.Label.Text = "sustained ballots/s"
	top.Y.Min, top.Y.Max = 0, maxB*1.2
	top.Y.Tick.Marker = thousandsTicks{}
	if err := curve(top, tp, palette[0], thousandsLabel); err != nil {
		return err
	}

	bottom := plot.New()
	bottom.Y.Label.Text = "converged after (ms)"
	bottom.X.Label.Text = "spokes (one worker each)"
	// Up to the 1 s bound of "sustained", so the margin is visible.
	bottom.Y.Min, bottom.Y.Max = 0, math.Max(1100, maxC*1.2)
	bound, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: 1000}, {X: xmax, Y: 1000}})
	if err != nil {
		return err
	}
	bound.Color, bound.Dashes = guideColor, []vg.Length{vg.Points(4), vg.Points(3)}
	bottom.Add(bound)
	bottom.Legend.Add("bound of \"sustained\" (1 s)", bound)
	bottom.Legend.Top = true
	bottom.Legend.YOffs = -vg.Points(16) // below the line it names
	if err := curve(bottom, cp, palette[1], func(v float64) string { return fmt.Sprintf("%.0f", v) }); err != nil {
		return err
	}

	for _, p := range []*plot.Plot{top, bottom} {
		p.X.Min, p.X.Max = xmin, xmax
		p.X.Tick.Marker = ticks
	}
	return savePlots(path, 16*vg.Centimeter, 14*vg.Centimeter, top, bottom)
}

// curve adds a line with its points, each labelled with its value.
func curve(p *plot.Plot, xys plotter.XYs, c color.Color, label func(float64) string) error {
	p.Add(plotter.NewGrid())
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, l.Width = c, vg.Points(1.5)
	s.Color, s.Shape, s.Radius = c, draw.CircleGlyph{}, vg.Points(3)
	var texts []string
	for _, xy := range xys {
		texts = append(texts, label(xy.Y))
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].XAlign = draw.XCenter
		labels.TextStyle[i].YAlign = draw.YBottom
	}
	labels.Offset = vg.Point{Y: vg.Points(5)}
	p.Add(l, s, labels)
	return nil
}

func thousandsLabel(v float64) string { return thousands(v) }

// thousandsTicks are gonum's default ticks labelled like the report's
// figures (4,000 rather than 4000.00).
type thousandsTicks struct{}

func (thousandsTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = thousands(ts[i].Value)
		}
	}
	return ts
}

// savePlots writes plots stacked top to bottom, sharing their left edge,
// as one PNG.
func savePlots(path string, w, h vg.Length, plots ...*plot.Plot) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(144))
	dc := draw.New(img)
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadY: vg.Points(6), PadTop: vg.Points(4), PadBottom: vg.Points(4),
		PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align(rows, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

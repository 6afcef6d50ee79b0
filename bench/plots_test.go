package main

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gonum.org/v1/plot/plotter"
)

func TestCDFPoints(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name string
		in   dist
		want plotter.XYs
	}{
		{"empty", nil, plotter.XYs{}},
		{"sorted, each point the share at most that large", dist{30 * ms, 10 * ms, 20 * ms, 40 * ms},
			plotter.XYs{{X: 10, Y: 25}, {X: 20, Y: 50}, {X: 30, Y: 75}, {X: 40, Y: 100}}},
		{"zero lags stay on the logarithmic axis", dist{0, 2 * ms},
			plotter.XYs{{X: minLagMs, Y: 50}, {X: 2, Y: 100}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := cdfPoints(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("cdfPoints = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNiceBounds(t *testing.T) {
	tests := []struct{ v, floor, ceil float64 }{
		{3.2, 2, 5},
		{1, 1, 1},
		{0.03, minLagMs, minLagMs},
		{140, 100, 200},
		{600, 500, 1000},
		{2000, 2000, 2000},
	}
	for _, tc := range tests {
		if f, c := niceFloor(tc.v), niceCeil(tc.v); f != tc.floor || c != tc.ceil {
			t.Errorf("%v: floor %v ceil %v, want %v and %v", tc.v, f, c, tc.floor, tc.ceil)
		}
	}
}

func TestMsTicks(t *testing.T) {
	var got []string
	for _, tk := range msTicks(2, 1000) {
		got = append(got, tk.Label)
	}
	want := []string{"2ms", "5ms", "10ms", "20ms", "50ms", "100ms", "200ms", "500ms", "1s"}
	if !slices.Equal(got, want) {
		t.Fatalf("ticks %v, want %v", got, want)
	}
}

// TestPictures draws both pictures from made-up figures and checks that
// each is a PNG of the intended size (144 dpi) and that drawing nothing
// is an error rather than an empty picture.
func TestPictures(t *testing.T) {
	dir := t.TempDir()
	var near, far dist
	for i := range 500 {
		near = append(near, time.Duration(2+i%40)*time.Millisecond)
		far = append(far, time.Duration(10+(i*i)%900)*time.Millisecond)
	}
	lag := filepath.Join(dir, "sub", "lag.png")
	if err := plotLagCDF(lag, "lag", []lagSeries{{label: "spoke→hub", lags: near}, {label: "spoke→hub→spoke", lags: far, dashed: true}}); err != nil {
		t.Fatal(err)
	}
	scaling := filepath.Join(dir, "scaling.png")
	pts := []scalePoint{{1, 4800, 40 * time.Millisecond}, {2, 4200, 90 * time.Millisecond}, {4, 3900, 300 * time.Millisecond}, {8, 3100, 700 * time.Millisecond}}
	if err := plotScaling(scaling, "scaling", pts); err != nil {
		t.Fatal(err)
	}
	for path, size := range map[string][2]int{lag: {1020, 624}, scaling: {907, 794}} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if cfg.Width != size[0] || cfg.Height != size[1] {
			t.Errorf("%s: %d×%d, want %d×%d", filepath.Base(path), cfg.Width, cfg.Height, size[0], size[1])
		}
	}
	if os.Getenv("VOTR_BENCH_PICTURES") != "" { // to look at them
		for _, p := range []string{lag, scaling} {
			b, _ := os.ReadFile(p)
			_ = os.WriteFile(filepath.Join(os.Getenv("VOTR_BENCH_PICTURES"), filepath.Base(p)), b, 0o644)
		}
	}
	if err := plotLagCDF(filepath.Join(dir, "none.png"), "none", []lagSeries{{label: "empty"}}); err == nil {
		t.Error("a lag picture without lags: no error")
	}
	if err := plotScaling(filepath.Join(dir, "none2.png"), "none", nil); err == nil {
		t.Error("a scaling picture without points: no error")
	}
}

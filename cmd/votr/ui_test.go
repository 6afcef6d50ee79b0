package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/votr-dev/votr/internal/testlog"
)

// chromium finds the browser the web view's test drives: VOTR_CHROMIUM,
// else Debian's chromium on PATH. Missing, the test fails: `make test`
// installs it (scripts/ensure-chromium.sh).
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VOTR_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed, and the web view's browser test needs it: run `bash scripts/ensure-chromium.sh` " +
		"(as root it installs Debian's chromium package; `make test` runs it), or set VOTR_CHROMIUM to a Chromium binary")
	return ""
}

// consoleErrors collects what the page reports as errors: exceptions,
// console.error and failed loads.
type consoleErrors struct {
	mu   sync.Mutex
	errs []string
}

func (c *consoleErrors) add(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, s)
}

func (c *consoleErrors) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// The web view in a real headless Chromium, as a person watching `votr
// apply --ui` sees it: a hub and 3 spokes on a managed server, 4 region
// nodes and 6 feed arrows drawn and coloured as running, a spoke's ballot
// count rising, then "converged" with the final report, and no JavaScript
// error or failed load on the way. It saves a screenshot (`make screenshot`
// writes the README's docs/ui.png with it).
func TestWebViewInBrowser(t *testing.T) {
	browser := chromium(t)
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		// The managed server runs as user postgres, which must reach the
		// state dir (else votr puts its data under /var/tmp).
		for _, d := range []string{filepath.Dir(dir), dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	topo := filepath.Join(dir, "topo.yaml")
	writeTopology(t, topo, "local", "drainDelay: 1m\nworkload:\n  interval: 20ms\n", 1, 2, 3)
	state := filepath.Join(dir, "state")
	t.Cleanup(func() {
		// The managed server goes with the state.
		if code, _, stderr := votr(t, "destroy", "--auto-approve", "--state-dir", state); code != 0 {
			t.Errorf("destroy: %s", stderr)
		}
	})

	apply := startVotr(t, "apply", topo, "--auto-approve", "--duration", "20s", "--state-dir", state,
		"--ui", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")
	url, out := apply.url, apply.out

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Containers often have a tiny /dev/shm; Chromium then crashes
		// rendering unless it keeps its shared memory in /tmp.
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancelAll := context.WithTimeout(ctx, 6*time.Minute)
	defer cancelAll()

	// Every console message of the page that is an error: an uncaught
	// exception, console.error, or a browser log entry such as a failed load.
	var errs consoleErrors
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				errs.add(fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
			}
		}
	}()
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(url))
	if err != nil || resp.Status != 200 {
		t.Fatalf("the page did not load: %v %+v\nvotr:\n%s", err, resp, out.String())
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible("#topology")); err != nil {
		t.Fatalf("the page shows no topology: %v", err)
	}

	// waitFor polls a JavaScript condition until it holds; past the
	// deadline it fails, saying what was seen last.
	waitFor := func(what, cond, seen string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			ok, err := eval[bool](ctx, "!!("+cond+")")
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				last, _ := eval[string](ctx, seen)
				t.Fatalf("%s: not within %s (err %v); the page shows: %s\nconsole errors: %q\nvotr:\n%s", what, within, err, last, errs.list(), out.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	const pageText = `document.body.innerText.slice(0, 1500)`

	if ready, err := eval[bool](ctx, `typeof window.votrView === "object"`); err != nil || !ready {
		t.Fatalf("the page's script did not run (window.votrView missing, err %v); console errors: %q", err, errs.list())
	}

	// 4 regions and 6 feeds drawn, every arrow labelled and coloured as a
	// running feed is.
	waitFor("4 region nodes and 6 feed arrows drawn",
		`document.querySelectorAll("#nodes g.node").length === 4 && document.querySelectorAll("#feeds line.feed").length === 6`,
		pageText, 3*time.Minute)
	waitFor("every feed connected (green or amber, not red) and labelled with lag, rows/s, conflicts and dead letters",
		`[...document.querySelectorAll("#feeds line.feed")].every(l => /\b(connected|behind)\b/.test(l.getAttribute("class"))) &&
		 [...document.querySelectorAll("#feeds text.feed-label")].every(l => /lag \d+ ms.* WAL behind · \d+ rows\/s/.test(l.textContent) && /\d+ conflicts · \d+ dead letters/.test(l.textContent))`,
		`[...document.querySelectorAll("#feeds line.feed, #feeds text.feed-label")].map(e => e.getAttribute("class") + " " + e.textContent).join(" | ")`,
		time.Minute)

	// The same figures for scripts, and the run's metrics on the same
	// listener.
	var st struct {
		Phase string
		Live  struct{ Regions, Feeds []struct{ Health string } }
	}
	if body := httpGet(t, url+"api/status"); json.Unmarshal([]byte(body), &st) != nil || len(st.Live.Regions) != 4 || len(st.Live.Feeds) != 6 {
		t.Errorf("/api/status during the run: %s", body)
	}
	if body := httpGet(t, url+"metrics"); !strings.Contains(body, "votr_worker_transactions_total") {
		t.Errorf("/metrics on the web view's listener lacks the run's series:\n%.500s", body)
	}

	// A spoke's ballot count, as its node shows it, rises.
	const spokeBallots = `document.querySelector('#nodes g.node[data-region="1"] .ballots').textContent`
	first, err := eval[string](ctx, spokeBallots)
	if err != nil {
		t.Fatal(err)
	}
	n0, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		t.Fatalf("spoke 1's node shows %q, not a ballot count", first)
	}
	waitFor(fmt.Sprintf("spoke 1's ballot count rising past %d", n0),
		fmt.Sprintf(`parseInt(%s, 10) > %d`, spokeBallots, n0), spokeBallots, time.Minute)
	waitFor("the ballots/s and lag charts drawn", `document.querySelectorAll("#chart-ballots canvas, #chart-lag canvas").length === 2`, pageText, 10*time.Second)

	// The end: "converged", and the report's table.
	waitFor(`the verdict "converged: all 4 regions identical"`,
		`document.getElementById("verdict").classList.contains("converged") &&
		 document.getElementById("verdict").textContent.startsWith("converged: all 4 regions identical")`,
		`document.getElementById("verdict").textContent`, 3*time.Minute)
	rows, err := eval[[]string](ctx, `[...document.querySelectorAll("#regions tbody tr")].map(r => r.innerText)`)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Errorf("the region table has %d rows, want 4: %q", len(rows), rows)
	}
	for _, r := range rows {
		if !strings.Contains(r, "\tok\t") || !(strings.HasSuffix(r, "yes") || strings.HasSuffix(r, "(hub)")) {
			t.Errorf("region row not ok and matching the hub: %q", r)
		}
	}
	if reportFeeds, err := eval[int](ctx, `document.querySelectorAll("#report-feeds tbody tr").length`); err != nil || reportFeeds != 6 {
		t.Errorf("the report's feed table has %d rows, want 6 (err %v)", reportFeeds, err)
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	// The screenshot goes to a scratch file, so a test run leaves the
	// checkout as it was; `make screenshot` points it at docs/ui.png.
	shot := os.Getenv("VOTR_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(os.TempDir(), "votr-ui.png")
	} else if !filepath.IsAbs(shot) {
		shot = filepath.Join("..", "..", shot)
	}
	if len(png) < 1000 {
		t.Errorf("the screenshot is %d bytes: the page drew nothing", len(png))
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)

	if err := apply.wait(time.Minute); err != nil {
		t.Errorf("apply: %v:\n%s", err, out.String())
	}
	// The page keeps its last status once votr has gone, without errors.
	waitFor("the page saying votr has exited", `document.getElementById("conn").textContent.includes("exited")`,
		`document.getElementById("conn").textContent`, 30*time.Second)

	// votr check --ui serves the same page read-only from the databases
	// until interrupted.
	check := startVotr(t, "check", topo, "--state-dir", state, "--ui", "127.0.0.1:0")
	checkURL := check.url
	if _, err := chromedp.RunResponse(ctx, chromedp.Navigate(checkURL)); err != nil {
		t.Fatalf("the check page did not load: %v", err)
	}
	waitFor("check's page: 4 nodes, 6 arrows and converged",
		`document.body.dataset.phase === "check" && document.querySelectorAll("#nodes g.node").length === 4 &&
		 document.querySelectorAll("#feeds line.feed").length === 6 &&
		 document.getElementById("verdict").textContent.startsWith("converged: all 4 regions identical")`,
		pageText, time.Minute)
	check.cmd.Process.Signal(os.Interrupt)
	if err := check.wait(time.Minute); err != nil {
		t.Errorf("check --ui after ^C: %v:\n%s", err, check.out.String())
	}
	waitFor("the check page saying votr has exited", `document.getElementById("conn").textContent.includes("exited")`,
		`document.getElementById("conn").textContent`, 30*time.Second)

	if e := errs.list(); len(e) > 0 {
		t.Errorf("the pages reported %d error(s):\n%s", len(e), strings.Join(e, "\n"))
	}
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// eval evaluates a JavaScript expression in the page into a T.
func eval[T any](ctx context.Context, expr string) (T, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// --ui and VOTR_UI_ADDR refuse to serve every interface, or a host name,
// before anything is touched.
func TestWebViewAddressRefused(t *testing.T) {
	dir := t.TempDir()
	topo := filepath.Join(dir, "topo.yaml")
	writeTopology(t, topo, "postgresql://postgres@127.0.0.1:1/?sslmode=disable", "", 1)
	for _, tc := range []struct {
		env  string
		args []string
		want string
	}{
		{args: []string{"apply", topo, "--ui", "0.0.0.0:8080"}, want: "would serve every network interface"},
		{args: []string{"apply", topo, "--ui", ":8080"}, want: "use 127.0.0.1:8080 for this machine only"},
		{args: []string{"check", topo, "--ui", "example.com:8080"}, want: "name an IP address"},
		{args: []string{"check", topo, "--ui", "127.0.0.1"}, want: "VOTR_UI_ADDR (--ui)"},
		{env: "[::]:8080", args: []string{"check", topo}, want: "would serve every network interface"},
	} {
		t.Run(tc.env+" "+strings.Join(tc.args[2:], " "), func(t *testing.T) {
			t.Setenv("VOTR_UI_ADDR", tc.env)
			code, stdout, stderr := votr(t, append(tc.args, "--state-dir", filepath.Join(dir, "state"))...)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want 1 with %q\nstdout:\n%s\nstderr:\n%s", code, tc.want, stdout, stderr)
			}
			if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
				t.Errorf("the state dir was created: something was touched")
			}
		})
	}
}

// votrProcess is votr with a web view, run as its own process (this test
// binary as main, see TestMain).
type votrProcess struct {
	cmd    *exec.Cmd
	out    *testlog.Buffer
	exited chan error
	url    string
}

// startVotr starts votr with args and waits for the URL of its web view,
// which must be the first line it prints. The process is killed at the
// end of the test if it is still running.
func startVotr(t *testing.T, args ...string) *votrProcess {
	t.Helper()
	p := &votrProcess{cmd: exec.Command(os.Args[0], args...), out: &testlog.Buffer{}, exited: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), "VOTR_TEST_RUN_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.wait(time.Minute)
	})
	// Port 0: votr picks a free port and prints it.
	urlRe := regexp.MustCompile(`Web view: (http://127\.0\.0\.1:\d+/)`)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if m := urlRe.FindStringSubmatch(p.out.String()); m != nil {
			p.url = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("votr %s printed no web view URL:\n%s", args[0], p.out.String())
		}
	}
	if first := strings.SplitN(p.out.String(), "\n", 2)[0]; !strings.HasPrefix(first, "Web view: ") {
		t.Errorf("votr %s: the URL is not the first line: %q", args[0], first)
	}
	return p
}

// wait waits for the process to exit and returns how it ended: nil for
// exit 0.
func (p *votrProcess) wait(within time.Duration) error {
	select {
	case err := <-p.exited:
		p.exited <- err // for the next wait
		return err
	case <-time.After(within):
		return fmt.Errorf("still running after %s", within)
	}
}

package config

import (
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// localName is what may follow "local:": it names a directory under the
// state directory, so it is kept to a safe, portable alphabet.
var localName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// passwordParam matches a password given as a URL query parameter.
var passwordParam = regexp.MustCompile(`(?i)(password=)[^&]*`)

// Redact returns a connect value fit to show a user: the password of a URL
// (in its user info or a password= parameter) is replaced by "xxxxx".
// It works on strings that are not valid URLs too, because those are exactly
// the ones that end up in error messages.
func Redact(connect string) string {
	prefix, rest := "", connect
	if i := strings.Index(connect, "://"); i >= 0 {
		prefix, rest = connect[:i+3], connect[i+3:]
	}
	// The last @ ends the user info even when an unencoded @ sits in the
	// password; cutting there over-redacts rather than leaks.
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		userinfo, host := rest[:at], rest[at+1:]
		if c := strings.Index(userinfo, ":"); c >= 0 {
			userinfo = userinfo[:c] + ":xxxxx"
		}
		rest = userinfo + "@" + host
	}
	out := passwordParam.ReplaceAllString(prefix+rest, "${1}xxxxx")
	// A libpq key=value string ("host=h password = 'p w'") has quoting rules
	// a regexp cannot follow: drop everything after the word password.
	if prefix == "" {
		if i := strings.Index(strings.ToLower(out), "password"); i >= 0 {
			out = out[:i] + "password=xxxxx"
		}
	}
	return out
}

// Redacted is the region's connect value without its password.
func (r Region) Redacted() string { return Redact(r.Connect) }

// Password is the password in a connect URL (in its user info or a
// password= parameter), or "": for callers that must keep it out of their
// own output.
func Password(connect string) string {
	u, err := url.Parse(connect)
	if err != nil {
		return ""
	}
	if p, ok := u.User.Password(); ok {
		return p
	}
	return u.Query().Get("password")
}

// ScrubError removes the password of connect from err's message, in case a
// driver error ever quotes it (as typed or percent-encoded). An error that
// does not hold it is returned as it is, its chain intact.
func ScrubError(err error, connect string) error {
	pw := Password(connect)
	if pw == "" {
		return err
	}
	msg := err.Error()
	scrubbed := strings.ReplaceAll(strings.ReplaceAll(msg, pw, "xxxxx"), url.QueryEscape(pw), "xxxxx")
	if scrubbed == msg {
		return err
	}
	return errors.New(scrubbed)
}

// WithoutPassword drops the password of a URL (a recorded one is
// redacted), so that the driver falls back on PGPASSWORD or ~/.pgpass.
// Anything that is not a URL is returned as it is.
func WithoutPassword(connect string) string {
	u, err := url.Parse(connect)
	if err != nil || u.User == nil || !strings.Contains(connect, "://") {
		return connect
	}
	u.User = url.User(u.User.Username())
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// checkConnect validates an expanded connect value s and returns what is
// wrong with it and how to fix it, or "". Messages quote the value as written
// in the file (shown), redacted: never the expanded text, which may carry a
// secret from the environment in a place Redact cannot recognise.
func checkConnect(s, shown string) string {
	q := quote(Redact(shown))
	const forms = `use "local", "local:NAME" or a URL like postgresql://USER@HOST:5432/?sslmode=verify-full`
	switch {
	case s == "":
		return "connect is empty; " + forms
	case s == "local":
		return ""
	case strings.HasPrefix(s, "local:"):
		name := strings.TrimPrefix(s, "local:")
		if !localName.MatchString(name) {
			return "connect " + q + " has an invalid local server name; use 1-32 lowercase letters, digits, - or _, starting with a letter or digit, e.g. local:east (it names a directory under the state dir)"
		}
		return ""
	}
	if !strings.Contains(s, "://") {
		return "connect " + q + " is neither a local server nor a URL; " + forms
	}
	u, err := url.Parse(s)
	if err != nil {
		return "connect " + q + " is not a valid URL: " + urlProblem(err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "connect " + q + " has scheme " + quote(u.Scheme) + "; write postgresql://USER@HOST:PORT/"
	}
	if u.Opaque != "" || u.Host == "" {
		return "connect " + q + " has no host; write postgresql://USER@HOST:PORT/ (Unix sockets are not supported: use 127.0.0.1)"
	}
	if strings.Contains(u.Host, ",") {
		return "connect " + q + " lists several hosts; give one host per region"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "connect " + q + " has port " + p + "; a port is a number from 1 to 65535"
		}
	}
	if u.Fragment != "" || strings.HasSuffix(s, "#") {
		return "connect " + q + " has a #fragment, which a connection URL cannot have; percent-encode # in a password as %23"
	}
	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "connect " + q + " has a malformed query string; write ?key=value&key=value with %-encoded values"
	}
	if modes, ok := query["sslmode"]; ok {
		if len(modes) != 1 || !contains(sslModes, modes[0]) {
			return "connect " + q + " has an invalid sslmode; use one of " + strings.Join(sslModes, ", ") + " (given once)"
		}
	}
	return ""
}

// urlProblem explains a url.Parse failure without quoting any part of the
// input: net/url's messages echo fragments (an "invalid port" can be half a
// password), so they are never passed on.
func urlProblem(err error) string {
	var ee url.EscapeError
	var he url.InvalidHostError
	msg := err.Error()
	switch {
	case errors.As(err, &ee):
		return "it has a bad %-escape; write a literal % as %25"
	case errors.As(err, &he):
		return "the host name has an invalid character; check the host (and percent-encode @ in a password as %40)"
	case strings.Contains(msg, "invalid port"):
		return "the port is not a number; if the password contains / ? # @ or :, percent-encode them (%2F %3F %23 %40 %3A)"
	case strings.Contains(msg, "control character"):
		return "it contains a control character; remove it"
	}
	return "percent-encode special characters in the user name and password (@ as %40, : as %3A, / as %2F)"
}

func quote(s string) string { return strconv.Quote(s) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

package main

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/egress-proxy/egress/policy"
)

// Request rules in egress check (issue 20): a URL target to a host with
// http: rules is a request, decided on its method (--method, GET by
// default) and path; any other target is decided as a connection, as
// before.

// withRequest adds the method and path of a URL target to req, and
// reports whether it did (false for a target that is not an http or
// https URL).
func withRequest(target string, req *policy.Request, method string) bool {
	if !strings.Contains(target, "://") {
		return false
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	req.Method = method
	if req.Method == "" {
		req.Method = "GET"
	}
	req.Path = u.EscapedPath()
	if req.Path == "" {
		req.Path = "/"
	}
	return true
}

// requestLabel is the label of a request decision: "POST URL" when the
// destination is intercepted (or --method was given), else the target.
func requestLabel(target string, d policy.Decision, methodFlag string) string {
	if d.Method != "" && (d.Intercept || methodFlag != "") {
		return d.Method + " " + target
	}
	return target
}

// formatRequest is what a request decision adds to a line of check
// output: the request rule that decided, and the headers egress would
// inject (named, never valued: check does not read them).
func formatRequest(d policy.Decision) string {
	var b strings.Builder
	if rr := d.RequestRule; rr != nil {
		fmt.Fprintf(&b, "  request rule %s %s", rr.Location(), rr.Text())
		if rr.Note != "" {
			fmt.Fprintf(&b, "  why: %s", rr.Note)
		}
	}
	if len(d.Inject) > 0 {
		names := make([]string, len(d.Inject))
		for i, in := range d.Inject {
			names[i] = in.Header
		}
		fmt.Fprintf(&b, "  inject: %s", strings.Join(names, ", "))
	}
	if d.Intercept && d.Method == "" && d.Allowed() {
		b.WriteString("  (intercepted: each request is decided on method and path; check a URL, with --method)")
	}
	return b.String()
}

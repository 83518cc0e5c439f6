package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// DiffRequests returns the requests old and new decide differently at the
// destinations either policy intercepts (rules with http:), as Diff does
// for connections: a request one lets through and the other refuses.
// The samples: every such host (a name under each wildcard) or cidr
// address, on the rule's first port (443 without ports), every method
// either policy names plus GET and POST, and for every path pattern of
// either policy at that destination a path it matches ('*' as one
// segment, '/**' as nothing and as two segments), plus "/" and a path no
// rule lists. Clients are not told apart: the top-level rules and each
// clients: entry's are sampled from no client.
//
// A destination one policy tunnels and the other intercepts shows as the
// requests the interception refuses or allows.
func DiffRequests(old, new *Policy) (changes []Change, tried int) {
	type dest struct {
		host string
		ip   netip.Addr
		port uint16
	}
	var dests []dest
	seen := map[dest]bool{}
	paths := map[dest][]string{}
	var methods []string
	for _, p := range []*Policy{old, new} {
		for _, r := range p.Rules() {
			if len(r.HTTP) == 0 {
				continue
			}
			d := dest{port: 443}
			if len(r.Ports) > 0 {
				d.port = r.Ports[0].Lo
			}
			if r.Host != "" {
				d.host, d.ip = sampleName(r.Host), diffPublic4
			} else {
				d.ip = r.Prefix.Addr()
			}
			if !seen[d] {
				seen[d] = true
				dests = append(dests, d)
			}
			for _, rr := range r.HTTP {
				methods = append(methods, rr.Methods...)
				for _, pp := range rr.pats {
					paths[d] = append(paths[d], pp.samples()...)
				}
			}
		}
	}
	methods = append(methods, "GET", "POST")
	sort.Strings(methods)
	methods = slices.Compact(methods)
	// A path of one destination's rules is tried at every destination:
	// a rule may move from one host to another.
	var all []string
	for _, ps := range paths {
		all = append(all, ps...)
	}
	all = append(all, "/", "/egress-diff/unlisted")
	sort.Strings(all)
	all = slices.Compact(all)
	var out []Change
	for _, d := range dests {
		for _, m := range methods {
			for _, path := range all {
				tried++
				r := Request{Host: d.host, IP: d.ip, Port: d.port, Method: m, Path: path}
				if c, ok := compare(old, new, r); ok {
					out = append(out, c)
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Wider() && !out[j].Wider() })
	return out, tried
}

// samples are paths the pattern matches: '*' as one segment, a trailing
// "/**" as nothing and as two segments.
func (pp *pathPattern) samples() []string {
	base := "/" + strings.Join(pp.segs, "/")
	base = strings.ReplaceAll(base, "/*/", "/x/")
	if strings.HasSuffix(base, "/*") {
		base = base[:len(base)-1] + "x"
	}
	if !pp.rest {
		return []string{base}
	}
	return []string{base, strings.TrimSuffix(base, "/") + "/x/y"}
}

// requestDestination is a request change's destination: "POST
// api.vendor.example:443/v1/admin".
func requestDestination(r Request) string {
	host := r.Host
	if host == "" {
		host = r.IP.String()
		if r.IP.Is6() {
			host = "[" + host + "]"
		}
	}
	return r.Method + " " + host + ":" + strconv.Itoa(int(r.Port)) + r.Path
}

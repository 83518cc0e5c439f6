package policy

import "testing"

func TestDiffRequests(t *testing.T) {
	base := "version: 1\ndefault: deny\nallow:\n  - host: api.vendor.example\n    ports: [443]\n"
	for _, tc := range []struct {
		name           string
		old, new       string
		wider, refuses int
	}{
		{"the same request rules differ in nothing", base + "    http: [{methods: [GET], paths: [\"/v1/**\"]}]\n", base + "    http: [{methods: [GET], paths: [\"/v1/**\"]}]\n", 0, 0},
		{"a method added allows its requests", base + "    http: [{methods: [GET], paths: [\"/v1/x\"]}]\n", base + "    http: [{methods: [GET, POST], paths: [\"/v1/x\"]}]\n", 1, 0},
		{"a path narrowed refuses the paths it no longer matches", base + "    http: [{methods: [GET], paths: [\"/v1/**\"]}]\n", base + "    http: [{methods: [GET], paths: [\"/v1/x\"]}]\n", 0, 2},
		{"a request deny refuses its requests on a tunnel host", base, base + "deny:\n  - host: api.vendor.example\n    http: [{methods: [DELETE], paths: [\"/**\"]}]\n", 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changes, tried := DiffRequests(loadHTTP(t, tc.old), loadHTTP(t, tc.new))
			wider := 0
			for _, c := range changes {
				if c.Wider() {
					wider++
				}
			}
			if wider != tc.wider || len(changes)-wider != tc.refuses || tried == 0 {
				for _, c := range changes {
					t.Logf("%v %s", c.Wider(), c.Destination())
				}
				t.Fatalf("DiffRequests: %d wider, %d narrower of %d; want %d, %d", wider, len(changes)-wider, tried, tc.wider, tc.refuses)
			}
		})
	}
}

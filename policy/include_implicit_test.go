package policy

import (
	"strings"
	"testing"
)

// Issue 18: mode: (and default:) left out counts as the tighter value when
// another file would loosen it, and never loosens anything by itself.
func TestIncludeImplicitSettingIsNotLoosened(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string // errors; nil: loads
	}{
		{"a site cannot set mode audit over a baseline that says nothing", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nmode: audit\n", "base.yaml": "version: 1\ndefault: deny\ndeny: [{host: a.com}]\n"},
			[]string{"site.yaml:3:7: mode: audit would loosen the mode of base.yaml, which leaves mode: out (counted as mode: enforce where another file would loosen it): a file may tighten the mode of the files it includes, never loosen it; write mode: audit in base.yaml if that is meant"}},
		{"nor a later sibling over an earlier silent one", map[string]string{
			"site.yaml": "version: 1\ninclude: [a.yaml, b.yaml]\n", "a.yaml": "version: 1\ndefault: deny\n", "b.yaml": "version: 1\nmode: audit\n"},
			[]string{"b.yaml:2:7: mode: audit would loosen the mode of a.yaml, which leaves mode: out (counted as mode: enforce where another file would loosen it): a file may tighten the mode of the files it includes, never loosen it; write mode: audit in a.yaml if that is meant"}},
		{"a site cannot set default allow over a baseline that says nothing", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: allow\n", "base.yaml": "version: 1\nallow: [{host: a.com}]\n"},
			[]string{"site.yaml:3:10: default: allow would loosen the default of base.yaml, which leaves default: out (counted as default: deny where another file would loosen it): a file may tighten the default of the files it includes, never loosen it; write default: allow in base.yaml if that is meant"}},
		{"a clients entry of another file cannot set mode audit", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    mode: audit\n", "base.yaml": "version: 1\ndefault: deny\n"},
			[]string{"site.yaml:6:11: mode: audit would loosen mode: enforce of base.yaml (which leaves mode: out) for this client: a clients entry may not loosen what another file sets"}},
		{"a baseline's clients entry cannot set mode audit under a silent site", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: deny\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    mode: audit\n"},
			[]string{"base.yaml:6:11: mode: audit would loosen mode: enforce of site.yaml (which leaves mode: out) for this client: a clients entry may not loosen what another file sets"}},
		{"a clients entry of another file cannot set default allow", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: deny\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    default: allow\n", "base.yaml": "version: 1\ndeny: [{host: a.com}]\n"},
			[]string{"site.yaml:7:14: default: allow would loosen default: deny of base.yaml (which leaves default: out) for this client: a clients entry may not loosen what another file sets"}},
		{"an audit baseline included by a silent site stays audit", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: allow\nmode: audit\n"}, nil},
		{"a site may say what its silent baseline means", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: deny\nmode: enforce\n", "base.yaml": "version: 1\n"}, nil},
		{"a silent file between an audit baseline and an audit site loosens nothing", map[string]string{
			"site.yaml": "version: 1\ninclude: [mid.yaml]\nmode: audit\n", "mid.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: allow\nmode: audit\n"}, nil},
		{"a clients entry of the silent file itself may audit", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    mode: audit\n", "base.yaml": "version: 1\ndefault: allow\nmode: audit\n"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, errs := loadMem(t, c.files, "site.yaml")
			if strings.Join(errs, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(c.want, "\n"))
			}
			if c.want == nil && p == nil {
				t.Errorf("no policy")
			}
		})
	}
	t.Run("the audit baseline's policy is audit", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{"site.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: deny\nmode: audit\n"}, "site.yaml")
		if errs != nil || p.Mode != Audit {
			t.Fatalf("errors %v, mode %v; want audit", errs, p)
		}
	})
}

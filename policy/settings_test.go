package policy

import (
	"slices"
	"testing"
)

// Every setting a file may write is one egress show prints, with the
// FILE:LINE that set it.
func TestSettingsCoverEverySection(t *testing.T) {
	var keys []string
	for _, k := range settingKeys {
		keys = append(keys, k.key)
	}
	for sec, fields := range sectionFields {
		for _, f := range fields {
			if !slices.Contains(keys, sec+"."+f) {
				t.Errorf("%s.%s is not in settingKeys", sec, f)
			}
		}
	}
	p, errs := loadMem(t, map[string]string{
		"site.yaml": "version: 1\ninclude: [base.yaml]\ndns:\n  timeout: 3s\n",
		"base.yaml": "version: 1\ndefault: deny\ndns:\n  timeout: 1s\n  blocked: refused\n",
	}, "site.yaml")
	if errs != nil {
		t.Fatal(errs)
	}
	want := map[string]Setting{
		"default":     {Key: "default", Value: "deny", Source: "base.yaml:2"},
		"mode":        {Key: "mode", Value: "enforce"},
		"dns.timeout": {Key: "dns.timeout", Value: "3s", Source: "site.yaml:4"},
		"dns.blocked": {Key: "dns.blocked", Value: "refused", Source: "base.yaml:5"},
		"dns.max_ttl": {Key: "dns.max_ttl", Value: "1h"},
	}
	for _, s := range p.Settings() {
		if w, ok := want[s.Key]; ok && s != w {
			t.Errorf("%+v; want %+v", s, w)
		}
	}
}

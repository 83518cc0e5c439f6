package policy

import (
	"strings"
	"testing"
)

func TestRequirementVia(t *testing.T) {
	rs, err := LoadRequirements("r.json", []byte(`{"requirements": [
  {"host": "10.1.2.3", "port": 5432, "via": "direct"},
  {"host": "api.example.com", "port": 443, "via": "proxy"},
  {"host": "db.example.com", "port": 5432}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs.List {
		got = append(got, r.Via)
	}
	if strings.Join(got, ",") != "direct,proxy," {
		t.Errorf("via %q, want direct, proxy and none", got)
	}
	_, err = LoadRequirements("r.json", []byte(`{"requirements": [{"host": "a.example", "port": 1, "via": "tunnel"}]}`))
	if err == nil || !strings.Contains(err.Error(), `r.json:1:`) || !strings.Contains(err.Error(), "via must be direct or proxy") {
		t.Errorf("a bad via: %v", err)
	}
}

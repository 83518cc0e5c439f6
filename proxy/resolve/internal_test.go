package resolve

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestCacheIsBounded(t *testing.T) {
	var c cache
	c.setMax(3)
	now := time.Now()
	for _, n := range []string{"a.", "b.", "c.", "d."} {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		rr, _ := dns.NewRR(n + " 60 IN A 93.184.216.34")
		m.Answer = []dns.RR{rr}
		c.put(keyOf(m.Question[0], false, false), m, now, 0, time.Hour)
	}
	if c.len() != 3 {
		t.Fatalf("len %d, want 3", c.len())
	}
	if m, _, _ := c.get(keyOf(dns.Question{Name: "a.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, false, false), now); m != nil {
		t.Fatal("the least recently used entry was kept")
	}
	c.setMax(1)
	if m, _, _ := c.get(keyOf(dns.Question{Name: "d.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, false, false), now); c.len() != 1 || m == nil {
		t.Fatal("shrinking did not keep the newest entry")
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	t.Run("upstreams come from resolv.conf when the policy lists none", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "resolv.conf")
		if err := os.WriteFile(path, []byte("nameserver 127.0.0.1\nnameserver ::1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := &Resolver{ResolvConf: path}
		ups, err := r.upstreams(nil)
		if err != nil || !slices.Equal(ups, []string{"127.0.0.1:53", "[::1]:53"}) {
			t.Fatalf("upstreams %q, %v", ups, err)
		}
	})
}

func TestParseResolvConf(t *testing.T) {
	text := `# generated
search example.com
nameserver 192.0.2.53
nameserver   2001:db8::53 # trailing comment
;nameserver 192.0.2.99
nameserver fe80::1%eth0
nameserver not-an-address
options ndots:2
nameserver
`
	got, err := ParseResolvConf(strings.NewReader(text))
	want := []string{"192.0.2.53:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadResolvConf(path); err != nil || !slices.Equal(got, want) {
		t.Fatalf("ReadResolvConf: %q, %v", got, err)
	}
	if _, err := ReadResolvConf(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) && err == nil {
		t.Fatalf("missing file: %v", err)
	}
	var r Resolver
	r.ResolvConf = filepath.Join(t.TempDir(), "missing")
	if _, err := r.upstreams(nil); err == nil || !strings.Contains(err.Error(), "no usable dns upstream") {
		t.Fatalf("missing resolv.conf: %v", err)
	}
}

package answer

import (
	"strings"
	"testing"
)

// FuzzReasonPhrase: whatever a client puts in a host name, the reason
// phrase is one line of printable ASCII, bounded, ending with the id.
func FuzzReasonPhrase(f *testing.F) {
	for _, s := range []string{"egress denied a.test:443: no rule matched", "x\r\nSet-Cookie: a=b", "caf\xc3\xa9", strings.Repeat("a", 400)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r := ReasonPhrase(text, "0123456789abcdef")
		if len(r) > maxReason || !strings.HasSuffix(r, " (id 0123456789abcdef)") {
			t.Fatalf("%d bytes, or no id: %q", len(r), r)
		}
		for i := 0; i < len(r); i++ {
			if r[i] < 0x20 || r[i] > 0x7e {
				t.Fatalf("byte %#x in %q", r[i], r)
			}
		}
	})
}

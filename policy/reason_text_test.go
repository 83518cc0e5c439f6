package policy

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// A rule's reason is shown in a 403's status line and body, a DNS EDE
// text, log lines and egress check: text that could reorder or hide what a
// reader sees (bidi controls, zero-width characters) or is not UTF-8 at
// all is refused at load, at its FILE:LINE:COL.
func TestReasonRefusesInvisibleAndNonUTF8Text(t *testing.T) {
	for name, reason := range map[string]string{
		"a bidi override":          "ok \u202e gnp.live",
		"a bidi isolate":           "ok \u2066x\u2069",
		"a zero-width space":       "as\u200bk netops",
		"a byte order mark":        "\ufeffask netops",
		"bytes that are not UTF-8": "ask \xff\xfe netops",
		"a private-use character":  "ask \ue000",
	} {
		t.Run(name, func(t *testing.T) {
			text := "version: 1\ndefault: deny\ndeny:\n  - host: ads.example.com\n    reason: \"" + reason + "\"\n"
			_, err := Load("p.yaml", []byte(text))
			var errs Errors
			want := "p.yaml:5:13: " // the reason
			if !utf8.ValidString(reason) {
				want = "p.yaml:5:18: " // the first byte that is not UTF-8
			}
			if !errors.As(err, &errs) || len(errs) != 1 || !strings.HasPrefix(errs[0].String(), want) {
				t.Fatalf("Load = %v; want one error at %s", err, want)
			}
		})
	}
	for name, reason := range map[string]string{
		"accents and other scripts": "demandez à l'équipe réseau · 问网络组",
		"a no-break space":          "ask\u00a0netops",
	} {
		t.Run(name+" is fine", func(t *testing.T) {
			text := "version: 1\ndefault: deny\ndeny:\n  - host: ads.example.com\n    reason: \"" + reason + "\"\n"
			if _, err := Load("p.yaml", []byte(text)); err != nil {
				t.Fatalf("Load = %v", err)
			}
		})
	}
}

package reload

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

func secretPolicy(dir string) string {
	return `version: 1
default: deny
allow:
  - host: api.vendor.example
    http: [{methods: [GET], paths: ["/v1/**"]}]
    inject:
      - header: Authorization
        from_file: ` + filepath.Join(dir, "token") + `
        prefix: "Bearer "
`
}

func injected(t *testing.T, p *policy.Policy) string {
	t.Helper()
	v, ok := p.Injects()[0].Value()
	if !ok {
		t.Fatal("the secret was not resolved")
	}
	return v
}

// A changed secret file is a reload even though the policy text is the
// same, and the refused value (a CR) keeps the old one in force; neither
// value reaches the log.
func TestReloadTakesAChangedSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, filepath.Join(dir, "token"), "first-secret\n")
	write(t, path, secretPolicy(dir))
	w, ch, logs := start(t, path)
	if got := injected(t, w.Current()); got != "Bearer first-secret" {
		t.Fatalf("value at start = %q", got)
	}
	write(t, filepath.Join(dir, "token"), "second-secret\n")
	waitOK(t, ch)
	if got := injected(t, w.Current()); got != "Bearer second-secret" {
		t.Fatalf("value after the change = %q", got)
	}
	write(t, filepath.Join(dir, "token"), "third\r\nX-Evil: 1\n")
	if r := wait(t, ch); r.err == nil || !strings.Contains(r.err.Error(), "holds a control character") {
		t.Fatalf("reload with a CR in the secret = %v; want refused", r.err)
	}
	if got := injected(t, w.Current()); got != "Bearer second-secret" {
		t.Fatalf("value after a refused change = %q", got)
	}
	for _, v := range []string{"first-secret", "second-secret", "third", "X-Evil"} {
		if strings.Contains(logs.String(), v) {
			t.Fatalf("the log shows a secret value %q:\n%s", v, logs.String())
		}
	}
}

func TestLoadRefusesAMissingSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, secretPolicy(dir))
	_, err := New(path)
	var errs policy.Errors
	if !errors.As(err, &errs) || !strings.HasPrefix(errs[0].String(), path+":8:20: inject Authorization: cannot read the file") {
		t.Fatalf("New = %v; want refused at %s:8:20", err, path)
	}
	t.Setenv("EGRESS_TEST_UNSET_SECRET", "")
	os.Unsetenv("EGRESS_TEST_UNSET_SECRET")
	text := strings.Replace(secretPolicy(dir), "from_file: "+filepath.Join(dir, "token"), "from_env: EGRESS_TEST_UNSET_SECRET", 1)
	if _, err := Load(path, []byte(text), ReadFile); err == nil || !strings.Contains(err.Error(), "the variable EGRESS_TEST_UNSET_SECRET is not set") {
		t.Fatalf("Load = %v; want the variable refused", err)
	}
}

// Check refuses a reload the caller cannot put in force.
func TestCheckRefusesAReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, "version: 1\ndefault: deny\n")
	w, err := New(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Check = func(p *policy.Policy) error {
		if p.Default == policy.Allow {
			return errors.New("no")
		}
		return nil
	}
	write(t, path, "version: 1\ndefault: allow\n")
	if err := w.Reload(); err == nil || w.Current().Default != policy.Deny {
		t.Fatalf("Reload = %v, default %v; want refused", err, w.Current().Default)
	}
}

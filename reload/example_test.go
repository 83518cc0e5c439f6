package reload_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// A Watcher's Current is the Policy hook of every data path; a refused
// file leaves it alone.
func ExampleWatcher() {
	dir, _ := os.MkdirTemp("", "egress")
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "policy.yaml")
	os.WriteFile(file, []byte("version: 1\ndefault: deny\n"), 0o600)

	w, err := reload.New(file)
	if err != nil {
		fmt.Println(err)
		return
	}
	w.OnReload = func(p *policy.Policy, err error) {
		fmt.Println("reloaded:", err == nil)
	}
	current := w.Current // e.g. httpproxy.Proxy{Policy: current}

	os.WriteFile(file, []byte("version: 1\ndefault: allow\n"), 0o600)
	w.Reload() // what SIGHUP or a change of the file does, once Start is called
	fmt.Println("default:", current().Default)

	os.WriteFile(file, []byte("version: 1\ndefualt: deny\n"), 0o600)
	w.Reload()
	fmt.Println("default:", current().Default)
	// Output:
	// reloaded: true
	// default: allow
	// reloaded: false
	// default: allow
}

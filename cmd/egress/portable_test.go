package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestBuildsOutsideLinux: plugin authors run serve, check, lint and learn
// on macOS, so the module must build (and vet, tests included) there;
// Windows must at least build. Only egress run needs Linux, and says so.
func TestBuildsOutsideLinux(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the module: skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH: cannot cross-compile")
	}
	for _, tt := range []struct{ goos, verb string }{
		{"darwin", "build"},
		{"darwin", "vet"},
		{"windows", "build"},
	} {
		t.Run("GOOS="+tt.goos+" go "+tt.verb, func(t *testing.T) {
			args := []string{tt.verb, "./..."}
			if tt.verb == "build" {
				// Under a uid other than the checkout's owner, Git's
				// safe.directory check fails the VCS stamping.
				args = []string{"build", "-buildvcs=false", "./..."}
			}
			cmd := exec.Command(goTool, args...)
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "GOOS="+tt.goos, "GOARCH=amd64", "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "unsupported GOOS/GOARCH") {
					t.Skipf("this toolchain cannot cross-compile for %s: %s", tt.goos, out)
				}
				t.Fatalf("GOOS=%s go %s ./...: %v\n%s", tt.goos, tt.verb, err, out)
			}
		})
	}
}

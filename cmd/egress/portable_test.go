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
//
// Every package is compiled for each system (go vet type-checks them with
// their tests; go list -export compiles them, main packages included) and
// egress itself is linked for each. Linking is most of the cost of a
// cross build on a warm cache, so the other main packages (benchmark
// tools) are compiled but not linked: the link of egress already covers
// the runtime and the standard library they share.
func TestBuildsOutsideLinux(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("cross-compiles the module: skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH: cannot cross-compile")
	}
	// Under a uid other than the checkout's owner, Git's safe.directory
	// check fails the VCS stamping of a build.
	link := []string{"build", "-buildvcs=false", "-o", os.DevNull, "./cmd/egress"}
	for _, tt := range []struct {
		goos string
		args []string
	}{
		{"darwin", []string{"vet", "./..."}},
		{"darwin", link},
		{"windows", []string{"list", "-export", "-f", "{{.ImportPath}}", "./..."}},
		{"windows", link},
	} {
		t.Run("GOOS="+tt.goos+" go "+strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(goTool, tt.args...)
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "GOOS="+tt.goos, "GOARCH=amd64", "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "unsupported GOOS/GOARCH") {
					t.Skipf("this toolchain cannot cross-compile for %s: %s", tt.goos, out)
				}
				t.Fatalf("GOOS=%s go %s: %v\n%s", tt.goos, strings.Join(tt.args, " "), err, out)
			}
		})
	}
}

package policy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Every reason code is a constant of this package (the decision reasons
// and, beside them, those the data paths and egress run decide), and
// docs/policy.md's table of reasons lists each: operators alert on them.
func TestEveryReasonIsDocumented(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var reasons []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Reason" {
				return true
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, _ := strconv.Unquote(lit.Value)
					reasons = append(reasons, s)
				}
			}
			return true
		})
	}
	if len(reasons) < 20 {
		t.Fatalf("found %d reason constants, want every one (the parse missed some)", len(reasons))
	}
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reasons {
		if strings.HasPrefix(r, "guard_") {
			r = "guard_*" // the table gives the guards one row; the guard table lists each
		}
		if !strings.Contains(string(doc), "| `"+r+"`") && !strings.Contains(string(doc), ", `"+r+"` |") {
			t.Errorf("reason %q is not in docs/policy.md's table of reasons", r)
		}
	}
}

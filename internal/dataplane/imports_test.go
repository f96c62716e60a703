package dataplane_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The pure packages of the dataplane, and what they must not import.
var (
	pure = []string{"model", "render", "prefix", "dptest"}
	// forbiddenDirect are standard packages that do I/O; a pure package's
	// non-test files may not import them (fmt and the like may use them).
	forbiddenDirect = []string{"os", "syscall", "net"}
	// forbiddenAnywhere are the netlink and kernel-constant libraries: not
	// even a transitive import may reach them.
	forbiddenAnywhere = []string{"github.com/google/nftables", "github.com/mdlayher/netlink",
		"github.com/vishvananda/netlink", "github.com/vishvananda/netns", "golang.org/x/sys/unix"}
)

type listed struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func list(t *testing.T, args ...string) []listed {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v", strings.Join(args, " "), err)
	}
	var pkgs []listed
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func forbidden(path string, roots []string) bool {
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

// TestPurity: the model and render packages import no I/O package directly
// and reach no netlink library even transitively, so rendering is pure by
// the compiler's rules, not by convention.
func TestPurity(t *testing.T) {
	var args []string
	for _, p := range pure {
		args = append(args, "./"+p)
	}
	pkgs := list(t, args...)
	if len(pkgs) != len(pure) {
		t.Fatalf("go list found %d packages, want %d", len(pkgs), len(pure))
	}
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			if slices.Contains(forbiddenDirect, imp) {
				t.Errorf("%s imports %s", p.ImportPath, imp)
			}
		}
		for _, dep := range p.Deps {
			if forbidden(dep, forbiddenAnywhere) {
				t.Errorf("%s depends on %s", p.ImportPath, dep)
			}
		}
	}
}

// TestOnlyNftnlTalksNetlink: of the dataplane's packages, only nftnl (and
// its tests' support) imports a netlink library.
func TestOnlyNftnlTalksNetlink(t *testing.T) {
	for _, p := range list(t, "./...") {
		if strings.HasSuffix(p.ImportPath, "/nftnl") || strings.HasSuffix(p.ImportPath, "/nfttest") {
			continue
		}
		for _, imp := range p.Imports {
			if forbidden(imp, forbiddenAnywhere) {
				t.Errorf("%s imports %s", p.ImportPath, imp)
			}
		}
	}
}

// TestProductWithoutLibrary: the binaries encode and decode nf_tables with
// nftnl alone; google/nftables translates the model only in tests
// (nfttest), as the reference the encoder is checked against.
func TestProductWithoutLibrary(t *testing.T) {
	for _, p := range list(t, "../../cmd/...") {
		for _, dep := range p.Deps {
			if forbidden(dep, []string{"github.com/google/nftables"}) {
				t.Errorf("%s depends on %s", p.ImportPath, dep)
			}
		}
	}
}

// Package images tests `make images` as a release would run it: from clean
// clones, with empty build caches.
package images

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"sigs.k8s.io/yaml"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// buildClone clones the repository's HEAD into dir and runs `make images`
// there with an empty build cache of its own.
func buildClone(t *testing.T, dir string) (digests string, archives map[string]string) {
	t.Helper()
	run := func(name string, env []string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = filepath.Dir(dir)
		if name != "git" {
			cmd.Dir = dir
		}
		cmd.Env = append(cleanEnv(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	run("git", nil, "clone", "--quiet", "--no-hardlinks", repoRoot(), dir)
	cache := filepath.Join(filepath.Dir(dir), "gocache")
	// The module cache is shared (it holds sources, checked against
	// go.sum); the build cache, which holds compiled results, is empty.
	run("make", []string{"GOCACHE=" + cache}, "--no-print-directory", "images")
	b, err := os.ReadFile(filepath.Join(dir, "bin", "images", "digests"))
	if err != nil {
		t.Fatal(err)
	}
	archives = map[string]string{}
	for _, n := range []string{"controller", "agent"} {
		data, err := os.ReadFile(filepath.Join(dir, "bin", "images", n+".tar"))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		archives[n] = hex.EncodeToString(sum[:])
	}
	return string(b), archives
}

// cleanEnv is this process's environment without what a make that runs the
// test passes down (its flags and overrides), so that the clone's make sees
// only its own files.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "MAKEFLAGS", k == "MFLAGS", k == "MAKELEVEL", k == "MAKEOVERRIDES", k == "BIN",
			k == "GOFLAGS", k == "GOCACHE", k == "SOURCE_DATE_EPOCH", strings.HasPrefix(k, "IMAGE_"), k == "PUSH":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// TestImagesAreReproducible builds the images in two clones at different
// paths, each with an empty build cache, and compares every digest and every
// archive byte.
func TestImagesAreReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the images twice from scratch")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("needs git")
	}
	if out, err := exec.Command("git", "-C", repoRoot(), "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
		t.Logf("the work tree has changes: the clones build HEAD, not them")
	}
	tmp := t.TempDir()
	d1, a1 := buildClone(t, filepath.Join(tmp, "one", "nftguard"))
	d2, a2 := buildClone(t, filepath.Join(tmp, "two", "elsewhere", "src"))
	if d1 != d2 {
		t.Fatalf("two clean builds gave different digests:\n%s\nvs\n%s", d1, d2)
	}
	for n := range a1 {
		if a1[n] != a2[n] {
			t.Errorf("%s.tar differs between the builds: sha256 %s vs %s", n, a1[n], a2[n])
		}
	}
	refs := parseDigests(t, d1)
	checkAgainstManifests(t, refs)
	checkImages(t, filepath.Join(tmp, "one", "nftguard", "bin", "images"), refs)
}

// parseDigests reads "name:tag@sha256:..." lines into name:tag -> digest.
func parseDigests(t *testing.T, s string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		ref, digest, ok := strings.Cut(sc.Text(), "@")
		if !ok || !strings.HasPrefix(digest, "sha256:") {
			t.Fatalf("digests line %q", sc.Text())
		}
		out[ref] = digest
	}
	if len(out) != 2 {
		t.Fatalf("digests name %d images, want the controller and the agent:\n%s", len(out), s)
	}
	return out
}

// checkAgainstManifests: the images make builds are the ones the kustomize
// entry of config/default names, so that `kubectl apply -k config/default`
// runs what was built.
func checkAgainstManifests(t *testing.T, refs map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "config", "default", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Images []struct{ Name, NewName, NewTag string }
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.Images) != len(refs) {
		t.Fatalf("config/default names %d images, make images built %d", len(k.Images), len(refs))
	}
	for _, img := range k.Images {
		ref := img.NewName + ":" + img.NewTag
		if _, ok := refs[ref]; !ok {
			t.Errorf("config/default runs %s (for %s), which make images did not build (built %v)", ref, img.Name, refs)
		}
	}
}

// checkImages reads the archives back: one index per image with an amd64
// and an arm64 image, each with the user its manifest expects and its
// commands (the agent's with the CNI plugin it installs, /nftguard).
func checkImages(t *testing.T, dir string, refs map[string]string) {
	t.Helper()
	wantUser := map[string]string{"controller": "65532:65532", "agent": "0:0"}
	wantCommands := map[string][]string{"controller": {"controller"}, "agent": {"agent", "nftguard"}}
	for ref, digest := range refs {
		short := ref[strings.LastIndex(ref, "/")+1 : strings.LastIndex(ref, ":")]
		root := untar(t, filepath.Join(dir, short+".tar"))
		p, err := layout.FromPath(root)
		if err != nil {
			t.Fatal(err)
		}
		h, err := v1.NewHash(digest)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		inner, err := idx.ImageIndex(h)
		if err != nil {
			t.Fatalf("%s: the archive lacks its index %s: %v", ref, digest, err)
		}
		m, err := inner.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		arches := map[string]bool{}
		for _, d := range m.Manifests {
			img, err := inner.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			arches[cf.OS+"/"+cf.Architecture] = true
			if cf.Config.User != wantUser[short] {
				t.Errorf("%s %s/%s runs as %q, want %q", ref, cf.OS, cf.Architecture, cf.Config.User, wantUser[short])
			}
			if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/"+short {
				t.Errorf("%s entrypoint %q", ref, cf.Config.Entrypoint)
			}
			if got := commands(t, img); !slices.Equal(got, wantCommands[short]) {
				t.Errorf("%s %s/%s holds the commands %q, want %q", ref, cf.OS, cf.Architecture, got, wantCommands[short])
			}
		}
		if !arches["linux/amd64"] || !arches["linux/arm64"] || len(arches) != 2 {
			t.Errorf("%s holds %v, want linux/amd64 and linux/arm64", ref, arches)
		}
	}
}

// commands lists the executables of the image's last layer, its own.
func commands(t *testing.T, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[len(layers)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			slices.Sort(out)
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 {
			out = append(out, h.Name)
		}
	}
}

func untar(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("%s: entry %q escapes the archive", archive, h.Name)
		}
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var created = time.Unix(1764633600, 0).UTC()

func testSpec(t *testing.T) Spec {
	t.Helper()
	return Spec{
		Entrypoint: []string{"/agent"},
		User:       "65532",
		Created:    created,
		Base:       BaseFiles([]byte("-----BEGIN CERTIFICATE-----\n")),
		Labels:     map[string]string{"org.opencontainers.image.version": "v0.0.1"},
		Files: func(p Platform) ([]File, error) {
			return []File{{Path: "/agent", Mode: 0o755, Data: []byte("binary for " + p.String())}}, nil
		},
	}
}

var twoPlatforms = []Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

type entry struct {
	hdr  *tar.Header
	data string
}

func layerEntries(t *testing.T, l v1.Layer) map[string]entry {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return tarEntries(t, rc)
}

func tarEntries(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = entry{hdr: h, data: string(b)}
	}
}

func TestLayerIsAFunctionOfItsFiles(t *testing.T) {
	files := BaseFiles([]byte("certs"))
	reversed := make([]File, len(files))
	for i, f := range files {
		reversed[len(files)-1-i] = f
	}
	a, err := Layer(files, created)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Layer(reversed, created)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("the order files are listed in changed the layer: %s vs %s", da, db)
	}
	c, err := Layer(files, created.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if dc, _ := c.Digest(); dc == da {
		t.Fatal("the modification time did not reach the layer")
	}
	mt, err := a.MediaType()
	if err != nil || mt != types.OCILayer {
		t.Fatalf("media type %q, %v; want %q", mt, err, types.OCILayer)
	}
}

func TestLayerEntries(t *testing.T) {
	l, err := Layer(append(BaseFiles([]byte("certs")), File{Path: "/usr/local/bin/agent", Mode: 0o755, Data: []byte("elf")}), created)
	if err != nil {
		t.Fatal(err)
	}
	got := layerEntries(t, l)
	for name, want := range map[string]struct {
		typ      byte
		mode     int64
		uid      int
		contains string
	}{
		"etc/passwd":                        {tar.TypeReg, 0o644, 0, "nonroot:x:65532:65532:"},
		"etc/group":                         {tar.TypeReg, 0o644, 0, "nonroot:x:65532:"},
		"etc/ssl/certs/ca-certificates.crt": {tar.TypeReg, 0o644, 0, "certs"},
		"etc/ssl/":                          {tar.TypeDir, 0o755, 0, ""},
		"home/nonroot/":                     {tar.TypeDir, 0o700, NonRootUID, ""},
		"tmp/":                              {tar.TypeDir, 0o1777, 0, ""},
		"usr/local/bin/":                    {tar.TypeDir, 0o755, 0, ""},
		"usr/local/bin/agent":               {tar.TypeReg, 0o755, 0, "elf"},
	} {
		e, ok := got[name]
		if !ok {
			t.Errorf("%s: missing from the layer", name)
			continue
		}
		if e.hdr.Typeflag != want.typ || e.hdr.Mode != want.mode || e.hdr.Uid != want.uid || e.hdr.Gid != want.uid {
			t.Errorf("%s: type %c mode %o owner %d:%d; want type %c mode %o owner %d", name, e.hdr.Typeflag, e.hdr.Mode, e.hdr.Uid, e.hdr.Gid, want.typ, want.mode, want.uid)
		}
		if !strings.Contains(e.data, want.contains) {
			t.Errorf("%s: content %q lacks %q", name, e.data, want.contains)
		}
		if !e.hdr.ModTime.Equal(created) {
			t.Errorf("%s: modified %s, want %s", name, e.hdr.ModTime, created)
		}
	}
}

func TestLayerRejectsBadPaths(t *testing.T) {
	for _, files := range [][]File{
		{{Path: "etc/passwd"}},
		{{Path: "/etc/../passwd"}},
		{{Path: "/"}},
		{{Path: "/a"}, {Path: "/a"}},
		{{Path: "/a", Mode: 0o644}, {Path: "/a/b"}},
	} {
		if _, err := Layer(files, created); err == nil {
			t.Errorf("%v: accepted", files)
		}
	}
}

func TestBuildIndex(t *testing.T) {
	idx, err := Build(testSpec(t), twoPlatforms)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIImageIndex || len(m.Manifests) != 2 {
		t.Fatalf("index %s with %d manifests; want an OCI index of 2", m.MediaType, len(m.Manifests))
	}
	var baseDigest v1.Hash
	for i, d := range m.Manifests {
		want := twoPlatforms[i]
		if d.Platform == nil || d.Platform.OS != want.OS || d.Platform.Architecture != want.Architecture {
			t.Fatalf("manifest %d platform %v, want %s", i, d.Platform, want)
		}
		if d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("manifest %d media type %s", i, d.MediaType)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != want.OS || cf.Architecture != want.Architecture {
			t.Errorf("config %s/%s, want %s", cf.OS, cf.Architecture, want)
		}
		if cf.Config.User != "65532" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/agent" {
			t.Errorf("config user %q entrypoint %q", cf.Config.User, cf.Config.Entrypoint)
		}
		if !cf.Created.Time.Equal(created) {
			t.Errorf("created %s, want %s", cf.Created.Time, created)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 2 {
			t.Fatalf("%d layers, %v; want base and own", len(layers), err)
		}
		bd, _ := layers[0].Digest()
		if i > 0 && bd != baseDigest {
			t.Errorf("platforms do not share the base layer: %s vs %s", bd, baseDigest)
		}
		baseDigest = bd
		own := layerEntries(t, layers[1])
		if e := own["agent"]; e.data != "binary for "+want.String() || e.hdr.Mode != 0o755 {
			t.Errorf("own layer /agent = %q mode %o", e.data, e.hdr.Mode)
		}
	}

	again, err := Build(testSpec(t), twoPlatforms)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := idx.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Fatalf("the same spec built twice gave %s and %s", d1, d2)
	}
}

func TestWriteArchive(t *testing.T) {
	idx, err := Build(testSpec(t), twoPlatforms)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag("registry.example/nftguard/agent:v0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, p := range []string{a, b} {
		if err := WriteArchive(p, []Named{{Ref: ref, Index: idx}}, created); err != nil {
			t.Fatal(err)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Fatal("two archives of the same image differ")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".layout-*")); len(left) != 0 {
		t.Fatalf("scratch left behind: %v", left)
	}

	// Unpack it as an importer would and find the index by its names.
	out := t.TempDir()
	for n, e := range tarEntries(t, bytes.NewReader(da)) {
		p := filepath.Join(out, filepath.FromSlash(n))
		if e.hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(e.data), fs.FileMode(e.hdr.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	lp, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	root, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("index.json lists %d entries, want 1", len(m.Manifests))
	}
	d := m.Manifests[0]
	want, _ := idx.Digest()
	if d.Digest != want || d.MediaType != types.OCIImageIndex {
		t.Fatalf("index.json points at %s (%s), want the image index %s", d.Digest, d.MediaType, want)
	}
	for _, k := range []string{annotationRefName, annotationContainerdName} {
		if d.Annotations[k] != ref.Name() {
			t.Errorf("annotation %s = %q, want %q", k, d.Annotations[k], ref.Name())
		}
	}
	// Every platform's blobs are in the archive, not only the host's.
	inner, err := root.ImageIndex(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := inner.IndexManifest()
	for _, md := range im.Manifests {
		img, err := inner.Image(md.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			ld, _ := l.Digest()
			if _, err := os.Stat(filepath.Join(out, "blobs", ld.Algorithm, ld.Hex)); err != nil {
				t.Errorf("%s layer %s: %v", md.Platform, ld, err)
			}
		}
	}
}

// TestPush pushes to go-containerregistry's registry implementation on
// loopback and reads the index back by tag.
func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	idx, err := Build(testSpec(t), twoPlatforms)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(strings.TrimPrefix(srv.URL, "http://")+"/nftguard/agent:v0.0.1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(context.Background(), []Named{{Ref: ref, Index: idx}}); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	dg, _ := got.Digest()
	dw, _ := idx.Digest()
	if dg != dw {
		t.Fatalf("registry holds %s under the tag, want %s", dg, dw)
	}
}

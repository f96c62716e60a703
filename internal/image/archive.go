package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Annotations an OCI archive's index.json carries for each image it holds:
// the OCI reference name, which podman and skopeo read, and containerd's own,
// which `ctr images import` (and so `kind load image-archive`) names the
// image after.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// Named is an index and the full reference it is published under.
type Named struct {
	Ref   name.Tag
	Index v1.ImageIndex
}

// WriteArchive writes the images as one OCI image layout in a tar file:
// oci-layout, index.json with one entry per image, and blobs/sha256. The
// archive holds every platform's blobs. Its bytes depend on the images alone.
func WriteArchive(dst string, images []Named, mtime time.Time) error {
	dir, err := os.MkdirTemp(filepath.Dir(dst), ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}
	for _, img := range images {
		ref := img.Ref.Name()
		if err := p.AppendIndex(img.Index, layout.WithAnnotations(map[string]string{
			annotationRefName:        ref,
			annotationContainerdName: ref,
		})); err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
	}
	var files []File
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			files = append(files, Dir("/"+filepath.ToSlash(rel), 0o755))
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, File{Path: "/" + filepath.ToSlash(rel), Mode: 0o644, Data: data})
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the OCI layout: %w", err)
	}
	b, err := tarFiles(files, mtime)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// Push writes the images to their registry with the default keychain
// (docker config, credential helpers).
func Push(ctx context.Context, images []Named) error {
	for _, img := range images {
		if err := remote.WriteIndex(img.Ref, img.Index, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("pushing %s: %w", img.Ref.Name(), err)
		}
	}
	return nil
}

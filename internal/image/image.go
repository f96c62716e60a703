// Package image builds nftguard's OCI images without a container engine:
// static binaries on a minimal base (a passwd entry for the non-root user,
// CA certificates, /tmp) assembled with go-containerregistry, one image per
// platform under a multi-arch index, written as an OCI archive that
// `ctr images import`, `kind load image-archive` and `podman load` accept.
//
// Everything that goes into an image is a pure function of its inputs: files
// are sorted, owned by root unless said otherwise, and stamped with the
// image's creation time, so the same sources give the same digests wherever
// they are built.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRootUID is the user the base image names "nonroot", as distroless does.
const NonRootUID = 65532

// File is one entry of an image layer.
type File struct {
	// Path is absolute inside the image ("/etc/passwd").
	Path string
	// Mode holds the permission bits; fs.ModeDir marks a directory.
	Mode fs.FileMode
	// UID and GID own the entry (root when zero).
	UID, GID int
	// Data is a regular file's content.
	Data []byte
}

// Dir returns a directory entry.
func Dir(p string, perm fs.FileMode) File { return File{Path: p, Mode: fs.ModeDir | perm} }

// Platform is an OS and architecture an image is built for.
type Platform struct {
	OS, Architecture, Variant string
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform reads "linux/amd64" or "linux/arm64/v8".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// Spec describes one image.
type Spec struct {
	// Entrypoint is the command the image runs.
	Entrypoint []string
	// User is the numeric user (and optionally ":group") the image runs as.
	User string
	// Env is added to PATH and SSL_CERT_FILE.
	Env []string
	// Labels go into the image configuration (org.opencontainers.image.*).
	Labels map[string]string
	// Created stamps the configuration, the history and every file.
	Created time.Time
	// Base is the base layer shared by all images (see BaseFiles).
	Base []File
	// Files returns the platform's own files (its binaries).
	Files func(Platform) ([]File, error)
}

// CABundlePath is where the base image keeps its CA certificates.
const CABundlePath = "/etc/ssl/certs/ca-certificates.crt"

// BaseFiles is the minimal base: root and nonroot users, CA certificates
// (from the build machine's bundle, which the caller reads), an nsswitch.conf
// so that Go's resolver consults /etc/hosts first, and a sticky /tmp.
func BaseFiles(caBundle []byte) []File {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID)
	return []File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(group)},
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: CABundlePath, Mode: 0o644, Data: caBundle},
		{Path: "/home/nonroot", Mode: fs.ModeDir | 0o700, UID: NonRootUID, GID: NonRootUID},
		Dir("/root", 0o700),
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
}

// Build assembles one image per platform and the index over them.
func Build(spec Spec, platforms []Platform) (v1.ImageIndex, error) {
	if len(platforms) == 0 {
		return nil, fmt.Errorf("no platforms")
	}
	base, err := Layer(spec.Base, spec.Created)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := buildOne(spec, base, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				Platform: &v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant},
			},
		})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

func buildOne(spec Spec, base v1.Layer, p Platform) (v1.Image, error) {
	var files []File
	if spec.Files != nil {
		var err error
		if files, err = spec.Files(p); err != nil {
			return nil, err
		}
	}
	own, err := Layer(files, spec.Created)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	created := v1.Time{Time: spec.Created}
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: created, CreatedBy: "nftguard base: passwd, group, CA certificates, /tmp"}},
		mutate.Addendum{Layer: own, History: v1.History{Created: created, CreatedBy: "nftguard " + strings.Join(spec.Entrypoint, " ")}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = created
	cf.Author = "nftguard"
	cf.Config.Entrypoint = slices.Clone(spec.Entrypoint)
	cf.Config.User = spec.User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"SSL_CERT_FILE=" + CABundlePath,
	}, spec.Env...)
	cf.Config.Labels = spec.Labels
	return mutate.ConfigFile(img, cf)
}

// Layer makes an OCI layer of files: sorted by path, parents created as
// needed (root-owned, 0755), every entry stamped with mtime.
func Layer(files []File, mtime time.Time) (v1.Layer, error) {
	b, err := tarFiles(files, mtime)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// tarFiles writes files as a tar stream. Paths are stored relative
// ("etc/passwd"), as image layers store them.
func tarFiles(files []File, mtime time.Time) ([]byte, error) {
	byPath := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q: want a clean absolute path", f.Path)
		}
		if _, dup := byPath[f.Path]; dup {
			return nil, fmt.Errorf("file path %q: listed twice", f.Path)
		}
		byPath[f.Path] = f
	}
	// Parents that are not listed are root-owned 0755 directories.
	for p := range byPath {
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if existing, ok := byPath[dir]; ok {
				if !existing.Mode.IsDir() {
					return nil, fmt.Errorf("file path %q: parent %q is not a directory", p, dir)
				}
				continue
			}
			byPath[dir] = Dir(dir, 0o755)
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := byPath[p]
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(f.Mode.Perm()),
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: mtime.UTC(),
		}
		if f.Mode&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		if f.Mode.IsDir() {
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if !f.Mode.IsDir() {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

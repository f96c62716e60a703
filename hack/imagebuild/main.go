// Command imagebuild builds OCI images of Go commands without a container
// engine: each command is cross-compiled (CGO off, -trimpath) for every
// platform, put on nftguard's minimal base, and written with its siblings as
// one OCI archive per image under -out, plus a digests file. With -push the
// indexes also go to their registry.
//
//	imagebuild -out bin/images -registry ghcr.io/nftguard -tag v0.1.0 \
//	    controller=./cmd/controller,user=65532 agent=./cmd/agent,user=0
//
// An image argument is NAME=DIR[+DIR...][,user=UID][,entrypoint=/PATH]: the
// command built in DIR (its own module's go build), installed as /NAME unless
// entrypoint says otherwise, run as UID (default the nonroot user). Each
// +DIR adds another command to the image, installed as /BASE (DIR's last
// element) beside the entrypoint: agent=./cmd/agent+./cmd/nftguard holds
// /agent and /nftguard (see image.CommandImage).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/nftguard/nftguard/internal/image"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	out := fs.String("out", "bin/images", "Directory for the OCI archives and the digests file.")
	registry := fs.String("registry", "ghcr.io/nftguard", "Registry and repository prefix of the image names.")
	tag := fs.String("tag", "v0.1.0", "Tag of every image.")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "Comma-separated platforms of the multi-arch index.")
	caBundle := fs.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates for the base image (Debian's ca-certificates package).")
	epoch := fs.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "Creation time in Unix seconds (default: the last commit's time).")
	push := fs.Bool("push", false, "Also push each index to its registry.")
	ldflags := fs.String("ldflags", "-s -w", "Linker flags of every command.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no images named")
	}
	var specs []image.CommandImage
	for _, s := range fs.Args() {
		a, err := image.ParseCommandImage(s)
		if err != nil {
			return err
		}
		specs = append(specs, a)
	}
	var plats []image.Platform
	for _, s := range strings.Split(*platforms, ",") {
		p, err := image.ParsePlatform(s)
		if err != nil {
			return err
		}
		plats = append(plats, p)
	}
	created, err := creationTime(ctx, *epoch)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(*caBundle)
	if err != nil {
		return fmt.Errorf("CA certificates for the base image: %w (install Debian's ca-certificates package or pass -ca-bundle)", err)
	}
	revision := gitOutput(ctx, "rev-parse", "HEAD")
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(*out, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var digests bytes.Buffer
	var built []image.Named
	for _, a := range specs {
		ref, err := name.NewTag(*registry+"/"+a.Name+":"+*tag, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image %s: %w", a.Name, err)
		}
		spec := image.Spec{
			Entrypoint: a.Entrypoint(),
			User:       a.User,
			Created:    created,
			Base:       image.BaseFiles(ca),
			Labels: map[string]string{
				"org.opencontainers.image.title":    a.Name,
				"org.opencontainers.image.version":  *tag,
				"org.opencontainers.image.source":   "https://github.com/nftguard/nftguard",
				"org.opencontainers.image.revision": revision,
			},
			Files: a.Files(func(c image.Command, p image.Platform) ([]byte, error) {
				bin := filepath.Join(work, a.Name+strings.ReplaceAll(c.Path, "/", "-")+"-"+p.OS+"-"+p.Architecture+p.Variant)
				if err := goBuild(ctx, c.Dir, bin, p, *ldflags); err != nil {
					return nil, err
				}
				return os.ReadFile(bin)
			}),
		}
		idx, err := image.Build(spec, plats)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref.Name(), err)
		}
		digest, err := idx.Digest()
		if err != nil {
			return err
		}
		named := image.Named{Ref: ref, Index: idx}
		archive := filepath.Join(*out, a.Name+".tar")
		if err := image.WriteArchive(archive, []image.Named{named}, created); err != nil {
			return fmt.Errorf("image %s: %w", ref.Name(), err)
		}
		fmt.Fprintf(&digests, "%s@%s\n", ref.Name(), digest)
		fmt.Printf("%s@%s -> %s\n", ref.Name(), digest, archive)
		built = append(built, named)
	}
	if err := os.WriteFile(filepath.Join(*out, "digests"), digests.Bytes(), 0o644); err != nil {
		return err
	}
	if *push {
		return image.Push(ctx, built)
	}
	return nil
}

// goBuild cross-compiles the command in dir: static, paths trimmed, and the
// architecture levels pinned so that the environment cannot change the code.
func goBuild(ctx context.Context, dir, out string, p image.Platform, ldflags string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags="+ldflags, "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture,
		"GOAMD64=v1", "GOARM64=v8.0", "GOFLAGS=-mod=readonly",
	)
	if p.Architecture == "arm" && p.Variant != "" {
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build in %s for %s: %w", dir, p, err)
	}
	return nil
}

func creationTime(ctx context.Context, epoch string) (time.Time, error) {
	if epoch == "" {
		epoch = gitOutput(ctx, "log", "-1", "--format=%ct")
	}
	if epoch == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	s, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("source date epoch %q: %w", epoch, err)
	}
	return time.Unix(s, 0).UTC(), nil
}

func gitOutput(ctx context.Context, args ...string) string {
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

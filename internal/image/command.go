package image

import (
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Command is one Go command an image holds.
type Command struct {
	// Dir is the directory its package is built in (go build runs there,
	// in Dir's own module).
	Dir string
	// Path is where the binary is installed in the image ("/agent").
	Path string
}

// CommandImage is an image of Go commands, as hack/imagebuild names it on
// its command line:
//
//	NAME=DIR[+DIR...][,user=UID[:GID]][,entrypoint=/PATH]
//
// The first DIR is the image's entrypoint, installed as /NAME unless
// entrypoint says otherwise. Each further DIR is a command that the image
// carries beside it, installed as /BASE, BASE being the DIR's last element
// (go build's own name for the binary): agent=./cmd/agent+./cmd/nftguard
// holds /agent, which it runs, and /nftguard. The image runs as UID
// (default NonRootUID).
type CommandImage struct {
	Name string
	// Commands are the image's binaries, the entrypoint first.
	Commands []Command
	// User is the numeric user, optionally with ":GID".
	User string
}

// ParseCommandImage reads a CommandImage from its command-line form.
func ParseCommandImage(s string) (CommandImage, error) {
	const usage = "want NAME=DIR[+DIR...][,user=UID][,entrypoint=/PATH]"
	parts := strings.Split(s, ",")
	n, dirs, ok := strings.Cut(parts[0], "=")
	if !ok || n == "" || dirs == "" || strings.Contains(n, "/") {
		return CommandImage{}, fmt.Errorf("image %q: %s", s, usage)
	}
	ci := CommandImage{Name: n, User: strconv.Itoa(NonRootUID)}
	for i, dir := range strings.Split(dirs, "+") {
		if dir == "" {
			return CommandImage{}, fmt.Errorf("image %q: empty command directory (%s)", s, usage)
		}
		p := "/" + n
		if i > 0 {
			base := filepath.Base(filepath.Clean(dir))
			if base == "." || base == ".." || base == string(filepath.Separator) {
				return CommandImage{}, fmt.Errorf("image %q: command directory %q does not name its binary", s, dir)
			}
			p = "/" + base
		}
		ci.Commands = append(ci.Commands, Command{Dir: dir, Path: p})
	}
	for _, opt := range parts[1:] {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "user":
			if _, err := strconv.ParseUint(strings.SplitN(v, ":", 2)[0], 10, 32); err != nil {
				return CommandImage{}, fmt.Errorf("image %q: user %q must be numeric (runAsNonRoot checks a numeric USER)", s, v)
			}
			ci.User = v
		case "entrypoint":
			if !path.IsAbs(v) || path.Clean(v) != v || v == "/" {
				return CommandImage{}, fmt.Errorf("image %q: entrypoint %q must be a clean absolute path", s, v)
			}
			ci.Commands[0].Path = v
		default:
			return CommandImage{}, fmt.Errorf("image %q: unknown option %q", s, k)
		}
	}
	seen := map[string]string{}
	for _, c := range ci.Commands {
		if other, dup := seen[c.Path]; dup {
			return CommandImage{}, fmt.Errorf("image %q: %s and %s would both be installed as %s", s, other, c.Dir, c.Path)
		}
		seen[c.Path] = c.Dir
	}
	return ci, nil
}

// Entrypoint is the path of the command the image runs.
func (ci CommandImage) Entrypoint() []string { return []string{ci.Commands[0].Path} }

// Files returns, for Spec.Files, every command of the image built by build
// for the platform and installed at its Path, mode 0755.
func (ci CommandImage) Files(build func(Command, Platform) ([]byte, error)) func(Platform) ([]File, error) {
	return func(p Platform) ([]File, error) {
		files := make([]File, 0, len(ci.Commands))
		for _, c := range ci.Commands {
			data, err := build(c, p)
			if err != nil {
				return nil, err
			}
			files = append(files, File{Path: c.Path, Mode: 0o755, Data: data})
		}
		return files, nil
	}
}
